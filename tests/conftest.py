"""Shared fixtures: a private model cache, the embedded model, the transformers reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.loading import embedded_model_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Fixtures that load the embedded model (or transformers' copy of it): a test using one is slow.
SLOW_FIXTURES = {"embedded", "reference_model", "embedded_fp32_export"}


def pytest_collection_modifyitems(items):
    """`-m "not slow"` leaves out every test that loads the embedded model (through a fixture, or
    marked so by hand where it loads it itself)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test (and CLI subprocess) converts models into a cache of its own session."""
    cache = tmp_path_factory.mktemp("lmforge-cache")
    old = os.environ.get("LMFORGE_CACHE_DIR")
    os.environ["LMFORGE_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LMFORGE_CACHE_DIR", None)
    else:
        os.environ["LMFORGE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded():
    """The embedded model in float32, loaded once."""
    return lmforge.load("smollm2-135m", "float32")


@pytest.fixture(scope="session")
def reference_model():
    """transformers reading the same GGUF file itself: the truth for parity tests."""
    from transformers import AutoModelForCausalLM

    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


def save_tiny_model(folder: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    """A tiny random transformers model saved as safetensors (with a small tokenizer-free config)."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    common.update(overrides)
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}[architecture]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM}[architecture]
    model = model_cls(config_cls(**common)).eval()
    if architecture == "qwen2":  # random q/k/v biases, so the test sees them
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_gguf(hf_folder: Path, out: Path, ffn_type: str = "Q8_0") -> Path:
    """Write a tiny llama HF model as GGUF the way llama.cpp does: Q/K rows permuted, the
    feed-forward weights quantized, a byte-level tokenizer in the metadata."""
    import gguf
    import numpy as np
    import transformers

    from lmforge.tokenizer import _BYTE_LEVEL

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder)
    c = model.config
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(list(_BYTE_LEVEL))
    w.add_token_types([1] * 256)
    w.add_token_scores([0.0] * 256)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def permute(x, heads):
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    layer_names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                   "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                   "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                   "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                   "mlp.down_proj.weight": "ffn_down.weight"}
    globals_ = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
    for name, tensor in model.state_dict().items():
        value = tensor.numpy()
        if name in globals_:
            gname = globals_[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{layer_names[rest]}"
        if gname.endswith("attn_q.weight"):
            value = permute(value, c.num_attention_heads)
        if gname.endswith("attn_k.weight"):
            value = permute(value, c.num_key_value_heads)
        if "ffn_" in gname and value.ndim == 2:
            qtype = getattr(gguf.GGMLQuantizationType, ffn_type)
            packed = gguf.quants.quantize(value, qtype)
            w.add_tensor(gname, packed, raw_shape=packed.shape, raw_dtype=qtype)
        elif value.ndim == 2:
            w.add_tensor(gname, value.astype(np.float16))
        else:
            w.add_tensor(gname, value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random llama model as a GGUF file with a byte-level tokenizer: loads, serves, exports."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return write_tiny_gguf(save_tiny_model(folder / "hf", "llama"), folder / "tiny.gguf")
