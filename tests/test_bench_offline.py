"""`lmforge bench offline`: the engine's own speed on a variant, next to a profile's prediction."""

import json

import pytest

from lmforge.cli import main


@pytest.mark.parametrize("backend, precision", [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnxruntime", "int4")])
def test_offline_bench_measures_and_predicts(tiny_gguf, tmp_path, capsys, backend, precision):
    out = tmp_path / "offline.json"
    assert main(["bench", "offline", str(tiny_gguf), "--backend", backend, "--precision", precision,
                 "--prompt-tokens", "32", "--decode-tokens", "8", "--repeats", "2", "--device", "accelerator-8gb",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["kind"] == "offline-bench" and r["backend"] == backend and r["precision"] == precision
    assert r["prefill_tokens_per_s"] == pytest.approx(32 / r["ttft_s"])
    assert r["decode_tokens_per_s"] == pytest.approx(1 / r["tpot_s"])
    assert r["peak_memory_bytes"] > r["weight_bytes"] > 0
    p = r["prediction"]
    assert p["profile"] == "accelerator-8gb" and p["basis"] == "peak figures"
    assert p["decode_error"] == pytest.approx(p["decode_tokens_per_s"] / r["decode_tokens_per_s"] - 1)
    assert "prediction error" in capsys.readouterr().out


def test_quantized_weights_are_smaller(tiny_gguf, tmp_path):
    sizes = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / f"{precision}.json"
        assert main(["bench", "offline", str(tiny_gguf), "--precision", precision, "--prompt-tokens", "16",
                     "--decode-tokens", "4", "--repeats", "1", "--out", str(out)]) == 0
        sizes[precision] = json.loads(out.read_text())["weight_bytes"]
    assert sizes["int8"] < sizes["fp32"] / 2


def test_bad_input(tiny_gguf, capsys):
    assert main(["bench", "offline", str(tiny_gguf), "--backend", "onnxruntime", "--precision", "bf16"]) == 1
    assert "bf16 runs on --backend torch" in capsys.readouterr().err
    assert main(["bench", "offline", str(tiny_gguf), "--decode-tokens", "1"]) == 1
    assert "--decode-tokens >= 2" in capsys.readouterr().err
    assert main(["bench", "offline", str(tiny_gguf), "--device", "no-such-device"]) == 1
    assert "no such device profile" in capsys.readouterr().err


def test_precision_is_the_weights_dtype_not_the_first_parameters(tmp_path):
    """A bfloat16 model with tied embeddings has float32 norms first among its parameters."""
    from types import SimpleNamespace

    import torch

    from conftest import save_tiny_model
    from lmforge.bench.offline import variant_precision
    from lmforge.loading import load_checkpoint
    from lmforge.models.transformer import Transformer

    checkpoint = load_checkpoint(save_tiny_model(tmp_path, "llama", tie_word_embeddings=True))
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors, dtype)
        assert variant_precision(SimpleNamespace(backend="torch", checkpoint=None, model=model)) == name
