"""ONNX export: tiny random models and the embedded model give the PyTorch backend's logits and tokens."""

import json
import os
import shutil
import subprocess
import sys

import onnx
import pytest
import torch
from conftest import save_tiny_model

import lmforge
from lmforge import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.kv_cache import KVCache
from lmforge.loading import load_checkpoint
from lmforge.models.transformer import Transformer
from lmforge.onnx.export import MANIFEST, export_onnx, read_manifest
from lmforge.onnx.runtime import OnnxDecoder
from lmforge.quant.apply import quantize_model, quantized_layer_factory
from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.serialize import save_quantized

TINY_CASES = [("llama", {"tie_word_embeddings": True}),
              ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
              ("qwen2", {}), ("mistral", {"sliding_window": 8})]


def export_tiny(tmp_path, architecture, overrides, **export_args):
    save_tiny_model(tmp_path / "hf", architecture, **overrides)
    folder = export_onnx(tmp_path / "hf", tmp_path / "onnx", show_progress=False, **export_args)
    checkpoint = load_checkpoint(tmp_path / "hf")
    torch_model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    return folder, OnnxDecoder(folder / "model.onnx", checkpoint.config), torch_model


@pytest.mark.parametrize("architecture,overrides", TINY_CASES, ids=lambda c: str(c))
def test_tiny_models_match_pytorch_with_and_without_the_cache(tmp_path, architecture, overrides):
    folder, decoder, reference = export_tiny(tmp_path, architecture, overrides)
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20).expand(3, 20)
    with torch.no_grad():
        expected = reference(tokens, positions)
    assert (decoder(tokens, positions) - expected).abs().max() < 1e-4
    # Prefill in two chunks, then one token at a time, in slot 1 of the engine's cache.
    cache = KVCache(reference.config, num_slots=3, max_seq_len=32)
    steps = []
    for start, stop in ((0, 7), (7, 12)) + tuple((i, i + 1) for i in range(12, 20)):
        pos = torch.arange(start, stop)[None]
        steps.append(decoder(tokens[1:2, start:stop], pos, cache.view([1], pos)))
    assert (torch.cat(steps, dim=1) - expected[1:2]).abs().max() < 1e-4
    last = decoder(tokens[1:2, :20], positions[:1], None, last_only=True)
    assert last.shape == (1, 1, 256) and (last[0, -1] - expected[1, -1]).abs().max() < 1e-4


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_batched_engine_greedy_tokens_match_pytorch(tmp_path, architecture):
    """Batch 1 and 3 prompts of different lengths; one request ends early, leaving a gap in the slots."""
    folder, decoder, reference = export_tiny(tmp_path, architecture, {})
    from lmforge.engine import Engine

    class NoTokenizer:
        eos_token_ids = ()

        def detokenizer(self, ids):
            class D:
                def add(self, token):
                    return ""

                def flush(self):
                    return ""
            return D()

    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (16, 4, 16)]
    results = []
    for model in (reference, decoder):
        engine = Engine(model, NoTokenizer(), max_batch=3, max_seq_len=64)
        batched = [c.token_ids for c in engine.generate(prompts, params)]
        single = engine.generate([prompts[2]], params[2])[0].token_ids
        results.append((batched, single))
    assert results[0] == results[1]
    assert results[0][0][2] == results[0][1]  # batching did not change the third answer


def test_export_folder_is_complete_and_writes_nothing_over(tmp_path):
    folder, _, _ = export_tiny(tmp_path, "llama", {"tie_word_embeddings": True}, precision="int4")
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.onnx.data", "config.json", MANIFEST} <= names
    manifest = read_manifest(folder)
    assert manifest["precision"] == "int4" and manifest["quantization"]["group_size"] == 32
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("MatMulNBits") == 2 * 4 + 1
    assert "GatherBlockQuantized" in ops  # the tied embedding reads the quantized head
    assert {i.name for i in graph.input} >= {"input_ids", "attention_mask", "position_ids",
                                            "past_key_values.0.key", "past_key_values.1.value"}
    assert {o.name for o in graph.output} >= {"logits", "present.0.key", "present.1.value"}
    onnx.checker.check_model(str(folder / "model.onnx"))  # opset 23: standard operators where ONNX has them
    with pytest.raises(LmforgeError, match="not empty"):
        export_onnx(tmp_path / "hf", folder, show_progress=False)
    with pytest.raises(LmforgeError, match="opset 12"):
        export_onnx(tmp_path / "hf", tmp_path / "other", opset=12, show_progress=False)
    with pytest.raises(LmforgeError, match="no such file"):
        export_onnx(tmp_path / "missing", tmp_path / "other", show_progress=False)
    assert not (tmp_path / "other").exists()


RECIPES = [QuantRecipe("rtn", 4, "group", 32, symmetric=False), QuantRecipe("rtn", 8),
           QuantRecipe("gptq", 4, "group", 32, desc_act=True), QuantRecipe("awq", 4, "group", 32),
           QuantRecipe("rtn", 4, "group", 32, head_bits=4), QuantRecipe("rtn", 8, head_bits=None)]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.method}-{r.bits}-{r.symmetric}-{r.head_bits}")
def test_quantized_models_export_their_own_levels(tmp_path, architecture, recipe):
    save_tiny_model(tmp_path / "hf", architecture, tie_word_embeddings=architecture == "llama")
    checkpoint = load_checkpoint(tmp_path / "hf")
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    calibration = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, recipe, calibration, show_progress=False)
    save_quantized(model, checkpoint.config, recipe, report.weights, tmp_path / "hf", tmp_path / "q")
    with pytest.raises(LmforgeError, match="already quantized"):
        export_onnx(tmp_path / "q", tmp_path / "wrong", precision="fp32", show_progress=False)
    # accuracy level 0: MatMulNBits computes in float32, so it must equal the same levels in PyTorch.
    folder = export_onnx(tmp_path / "q", tmp_path / "onnx", accuracy_level=0, show_progress=False)
    assert read_manifest(folder)["precision"] == f"int{recipe.bits}"
    saved = load_checkpoint(tmp_path / "q")
    factory = quantized_layer_factory(saved.config, saved.tensors, saved.quantization, torch.float32, torch.float32)
    exact = Transformer.from_hf_tensors(saved.config, saved.tensors, torch.float32, factory)
    decoder = OnnxDecoder(folder / "model.onnx", saved.config)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        expected = exact(tokens, positions)
    assert (decoder(tokens, positions) - expected).abs().max() < 1e-3 * expected.abs().max()


def test_w8a8_models_export_with_int8_activations(tmp_path):
    save_tiny_model(tmp_path / "hf", "qwen2")
    checkpoint = load_checkpoint(tmp_path / "hf")
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    recipe = QuantRecipe("smoothquant")
    calibration = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, recipe, calibration, show_progress=False)
    save_quantized(model, checkpoint.config, recipe, report.weights, tmp_path / "hf", tmp_path / "q")
    folder = export_onnx(tmp_path / "q", tmp_path / "onnx", accuracy_level=0, show_progress=False)
    assert read_manifest(folder)["accuracy_level"] == 4  # activations quantized at run time, per block
    decoder = OnnxDecoder(folder / "model.onnx", checkpoint.config)
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens, torch.arange(16)[None])
    got = decoder(tokens, torch.arange(16)[None])
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.999


# --- the embedded model ---------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are"]


@pytest.fixture(scope="module")
def embedded_fp32_export(tmp_path_factory):
    return export_onnx(None, tmp_path_factory.mktemp("onnx") / "fp32", show_progress=False)


def test_embedded_float32_export_matches_pytorch(embedded, embedded_fp32_export):
    onnx_model = lmforge.load(embedded_fp32_export)
    assert onnx_model.backend == "onnxruntime" and onnx_model.name == "smollm2-135m"
    ids = embedded.tokenizer.encode("The history of the Roman Empire is long and complicated.")
    tokens, positions = torch.tensor([ids]), torch.arange(len(ids))[None]
    with torch.no_grad():
        expected = embedded.model(tokens, positions)
    assert (onnx_model.model(tokens, positions) - expected).abs().max() < 1e-3
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    ours = onnx_model.engine(max_batch=4, max_seq_len=256).generate(PROMPTS, params)
    theirs = embedded.engine(max_batch=4, max_seq_len=256).generate(PROMPTS, params)
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]


@pytest.mark.slow  # quantizes and exports the embedded model
def test_embedded_int4_export_agrees_with_lmforge_int4(tmp_path):
    from lmforge.quant.workflow import quantize_to_folder

    _, _, quantized = quantize_to_folder(None, QuantRecipe("rtn", 4, "group", 32), tmp_path / "int4")
    exact = export_onnx(quantized, tmp_path / "onnx-exact", accuracy_level=0, show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    reference = lmforge.load(quantized, dtype="float32").engine(max_batch=4, max_seq_len=256).generate(PROMPTS, params)
    ours = lmforge.load(exact).engine(max_batch=4, max_seq_len=256).generate(PROMPTS, params)
    assert [c.token_ids for c in ours] == [c.token_ids for c in reference]
    fast = export_onnx(quantized, tmp_path / "onnx-fast", show_progress=False)  # INT8 activations per block
    lm = lmforge.load(fast)
    question = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    answer = lm.engine(max_batch=1, max_seq_len=128).generate([question], SamplingParams(temperature=0,
                                                                                         max_tokens=12))[0]
    assert "Paris" in answer.text


def test_an_export_runs_in_a_fresh_process_from_its_folder_alone(tmp_path, embedded_fp32_export):
    moved = shutil.copytree(embedded_fp32_export, tmp_path / "elsewhere")
    env = {**os.environ, "LMFORGE_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-m", "lmforge.cli", "generate", "--model", str(moved), "--json",
                             "-t", "0", "--max-tokens", "8", "The capital of France is"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in json.loads(result.stdout)["text"]
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())
