import json
import shutil

import pytest
import torch
import transformers

from conftest import save_tiny_model, write_tiny_gguf
from lmforge.errors import ModelError
from lmforge.loading import EMBEDDED_MODEL_NAME, embedded_model_path, load_checkpoint, load_config, resolve
from lmforge.models.transformer import Transformer


def test_embedded_model_name_resolves_to_the_package_gguf():
    source = resolve(EMBEDDED_MODEL_NAME)
    assert source.kind == "gguf" and source.path == embedded_model_path() and source.name == EMBEDDED_MODEL_NAME
    assert resolve(None) == source


def test_gguf_is_unpermuted_and_dequantized(tmp_path):
    hf = save_tiny_model(tmp_path / "hf", "llama")
    gguf_file = write_tiny_gguf(hf, tmp_path / "tiny.gguf")
    checkpoint = load_checkpoint(gguf_file, cache_dir=tmp_path / "cache")
    original = transformers.AutoModelForCausalLM.from_pretrained(hf).state_dict()
    # Q/K are stored as float16 in the file: equal after undoing llama.cpp's row permutation.
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        assert torch.equal(checkpoint.tensors[name], original[name].half().float())
    # Q8_0 blocks of 32 with one float16 scale each: about half a quantization step at most.
    gate = "model.layers.0.mlp.gate_proj.weight"
    step = original[gate].abs().reshape(-1, 32).amax(-1) / 127
    err = (checkpoint.tensors[gate] - original[gate]).abs().reshape(-1, 32).amax(-1)
    assert (err <= step * 0.6).all() and (err > 0).any()
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert (model(ids, torch.arange(12)[None]) - reference(ids).logits).abs().max() < 2e-2
    assert checkpoint.details["quantization_types"]["Q8_0"] == 6
    # Converted once: a second load reuses the cache folder.
    assert load_checkpoint(gguf_file, cache_dir=tmp_path / "cache").tokenizer_dir == checkpoint.tokenizer_dir


def test_sharded_safetensors_directory(tmp_path):
    save_tiny_model(tmp_path, "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    shutil.rmtree(tmp_path)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    checkpoint = load_checkpoint(tmp_path)
    assert torch.equal(checkpoint.tensors["lm_head.weight"], model.lm_head.weight)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_checkpoint(tmp_path / "nope")


def test_truncated_gguf_names_the_file(tmp_path):
    broken = tmp_path / "broken.gguf"
    with open(embedded_model_path(), "rb") as f:
        broken.write_bytes(f.read(2_000_000))
    with pytest.raises(ModelError, match="broken.gguf.*corrupt or truncated"):
        load_checkpoint(broken, cache_dir=tmp_path / "cache")


def test_file_that_is_not_gguf(tmp_path):
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_checkpoint(junk)


def test_unknown_architecture(tmp_path):
    save_tiny_model(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt_bigcode"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unsupported architecture 'gpt_bigcode'"):
        load_checkpoint(tmp_path)


def test_pickle_weights_are_refused_not_loaded(tmp_path):
    save_tiny_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        load_checkpoint(tmp_path)


def test_corrupt_safetensors_and_missing_tensors(tmp_path):
    save_tiny_model(tmp_path, "llama")
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    from safetensors.torch import save_file
    save_file({"model.embed_tokens.weight": torch.zeros(256, 64)}, str(weights))
    with pytest.raises(ModelError, match="missing"):
        load_checkpoint(tmp_path)


def test_config_only_loading_for_planning(tmp_path):
    save_tiny_model(tmp_path, "qwen2")
    config, name = load_config(tmp_path / "config.json")
    assert config.architecture == "qwen2" and config.attention_bias and name == tmp_path.name
    catalogue_config, catalogue_name = load_config("Llama-2-7B")
    assert catalogue_name == "llama-2-7b" and catalogue_config.num_layers == 32
