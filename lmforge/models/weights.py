"""The one map between checkpoint tensor names and lmforge's fused layers.

Checkpoints name weights the Hugging Face way (`model.layers.3.self_attn.q_proj.weight`), GGUF
files the llama.cpp way (`blk.3.attn_q.weight`). lmforge fuses q|k|v and gate|up into one layer
each, stacked by rows, and calls its modules `layers.3.attention.wqkv`, `layers.3.feed_forward.w13`.
Loading, the model, the ONNX export and quantization (saving and reading) all go through this map.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from lmforge.config import ModelConfig

EMBEDDING = "model.embed_tokens"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head"
OUTPUT = "output"  # lmforge's name of the output layer

# A block's fused linear layers: attribute path in the block -> Hugging Face names stacked by rows.
BLOCK_LINEARS: dict[str, tuple[str, ...]] = {
    "attention.wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attention.wo": ("self_attn.o_proj",),
    "feed_forward.w13": ("mlp.gate_proj", "mlp.up_proj"),
    "feed_forward.w2": ("mlp.down_proj",),
}
# A block's norms: attribute in the block -> Hugging Face name.
BLOCK_NORMS: dict[str, str] = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": EMBEDDING + ".weight",
    "output_norm.weight": FINAL_NORM,
    "output.weight": LM_HEAD + ".weight",
}


@dataclass(frozen=True)
class FusedLinear:
    """One of lmforge's linear layers and the checkpoint weights it stands for."""

    module: str
    """lmforge's module path: `layers.3.attention.wqkv`, or `output`."""
    parts: tuple[str, ...]
    """Hugging Face names (without `.weight`) stacked by rows, in order."""
    rows: tuple[int, ...]
    """Output rows of each part."""
    bias: bool

    def slices(self):
        """(name, first row, end row) of each part within the fused weight."""
        start = 0
        for name, rows in zip(self.parts, self.rows):
            yield name, start, start + rows
            start += rows


def stored(tensors: Container[str], stem: str) -> bool:
    """Whether the weight `stem` is in the checkpoint, dense or quantized (compressed-tensors
    keeps a `weight_shape` beside the integer levels)."""
    return f"{stem}.weight" in tensors or f"{stem}.weight_shape" in tensors


def is_quantized(tensors: Container[str], stem: str) -> bool:
    return f"{stem}.weight_shape" in tensors


class WeightMap:
    """The tensors of one architecture's checkpoint, named."""

    def __init__(self, config: ModelConfig):
        self.config = config
        c = config
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self._rows = {"self_attn.q_proj": q_dim, "self_attn.k_proj": kv_dim, "self_attn.v_proj": kv_dim,
                      "self_attn.o_proj": c.hidden_size, "mlp.gate_proj": c.intermediate_size,
                      "mlp.up_proj": c.intermediate_size, "mlp.down_proj": c.hidden_size}

    @staticmethod
    def prefix(layer: int) -> str:
        return f"model.layers.{layer}."

    def block_linears(self, layer: int) -> dict[str, FusedLinear]:
        """Attribute path in block `layer` -> its fused layer."""
        p = self.prefix(layer)
        return {attr: FusedLinear(f"layers.{layer}.{attr}", tuple(p + n for n in names),
                                  tuple(self._rows[n] for n in names),
                                  self.config.attention_bias and attr == "attention.wqkv")
                for attr, names in BLOCK_LINEARS.items()}

    def block_norms(self, layer: int) -> dict[str, str]:
        """Attribute in block `layer` -> the Hugging Face name of its weight."""
        return {attr: f"{self.prefix(layer)}{name}.weight" for attr, name in BLOCK_NORMS.items()}

    def head(self, tensors: Container[str]) -> FusedLinear:
        """The output layer. Tied embeddings keep one table: under the embedding's name while it is
        float, under `lm_head` once quantized (the quantized head then serves as the embedding)."""
        name = LM_HEAD if stored(tensors, LM_HEAD) else EMBEDDING
        return FusedLinear(OUTPUT, (name,), (self.config.vocab_size,), False)

    def saved_head(self) -> FusedLinear:
        """The output layer as a quantized checkpoint stores it (always `lm_head`)."""
        return FusedLinear(OUTPUT, (LM_HEAD,), (self.config.vocab_size,), False)

    def linear(self, module: str) -> FusedLinear:
        """The fused layer of an lmforge module path (`layers.3.attention.wqkv`, `output`)."""
        if module == OUTPUT:
            return self.saved_head()
        _, layer, attr = module.split(".", 2)
        return self.block_linears(int(layer))[attr]

    def head_is_embedding(self, tensors: Container[str]) -> bool:
        """Whether the output layer's weights also serve as the input embedding table."""
        return self.config.tie_word_embeddings or not stored(tensors, EMBEDDING)

    def expected_names(self) -> list[str]:
        """Every weight a checkpoint of this config holds (dense names)."""
        names = [EMBEDDING + ".weight", FINAL_NORM]
        if not self.config.tie_word_embeddings:
            names.append(LM_HEAD + ".weight")
        for i in range(self.config.num_layers):
            names += list(self.block_norms(i).values())
            for fused in self.block_linears(i).values():
                names += [n + ".weight" for n in fused.parts]
                if fused.bias:
                    names += [n + ".bias" for n in fused.parts]
        return names

    def missing(self, tensors: Container[str]) -> list[str]:
        """Expected weights that are neither dense nor quantized in `tensors` (a quantized tied
        head holds the embedding table too)."""
        def present(name: str) -> bool:
            if name in tensors or is_quantized(tensors, name.removesuffix(".weight")):
                return True
            return name == EMBEDDING + ".weight" and is_quantized(tensors, LM_HEAD)
        return [n for n in self.expected_names() if not present(n)]


def checkpoint_name(name: str) -> str:
    """Multimodal checkpoints nest the language model; lmforge reads just that part."""
    return name.removeprefix("model.language_model.").replace("language_model.model.", "model.")


def gguf_to_hf_name(name: str) -> str | None:
    """A GGUF tensor's Hugging Face name, or None for tensors lmforge does not read."""
    if name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[name]
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        if rest in _GGUF_LAYER_NAMES:
            return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[rest]}"
    return None


def is_query_or_key(hf_name: str) -> str | None:
    """'q' or 'k' for a query/key projection weight or bias, else None."""
    if ".self_attn.q_proj." in hf_name:
        return "q"
    if ".self_attn.k_proj." in hf_name:
        return "k"
    return None
