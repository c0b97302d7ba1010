"""The one table of precision names (fp32, bf16, int8, int4, ...) and what each one means.

Every command that takes a precision name reads it here: `bench offline --precision`, `deploy`,
`export onnx --precision`, `compare --variants`, `plan`. A float precision is a dtype; a
quantized one is a recipe (`int4` is round-to-nearest, symmetric, groups of 32 input columns
everywhere: the deploy default, the ONNX export and the offline benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import LmforgeError
from lmforge.quant.recipe import PER_GROUP, PER_TENSOR, QuantRecipe

INT4_GROUP = 32


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: str | None
    """A float precision's torch dtype name; None for a quantized one (see `recipe`)."""
    recipe: QuantRecipe | None

    @property
    def description(self) -> str:
        """'bfloat16', 'rtn 4-bit sym per group 32', 'smoothquant 8-bit sym per channel, int8 activations per token'."""
        r = self.recipe
        if r is None:
            return self.dtype
        text = f"{r.method} {r.bits}-bit {'sym' if r.symmetric else 'asym'} per {r.granularity}"
        text += f" {r.group_size}" if r.granularity == PER_GROUP else ""
        return text + (f", int8 activations per {r.activation_granularity}" if r.activation_granularity else "")

    @property
    def quantized(self) -> bool:
        return self.recipe is not None

    @property
    def bits(self) -> int:
        if self.recipe is not None:
            return self.recipe.bits
        return {"float32": 32, "bfloat16": 16, "float16": 16}[self.dtype]


def _int4(method: str) -> QuantRecipe:
    return QuantRecipe(method, 4, PER_GROUP, INT4_GROUP)


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", None),
    Precision("bf16", "bfloat16", None),
    Precision("fp16", "float16", None),
    Precision("int8", None, QuantRecipe("rtn", 8)),
    Precision("int8-asym", None, QuantRecipe("rtn", 8, symmetric=False)),
    Precision("int4", None, _int4("rtn")),
    Precision("int4-gptq", None, _int4("gptq")),
    Precision("int4-awq", None, _int4("awq")),
    Precision("w8a8-sq", None, QuantRecipe("smoothquant")),
    Precision("w8a8-rtn", None, QuantRecipe("rtn", 8, PER_TENSOR, activations="tensor")),
    Precision("llm-int8", None, QuantRecipe("llm-int8")),
)}
ALIASES = {"int4-rtn": "int4", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# Weight bytes per parameter for memory planning (INT4: a 32-bit scale per 128 weights, as
# GPTQ/AWQ checkpoints store them); the KV cache's bytes per element.
PLAN_WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / 128}
KV_CACHE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

# What each backend runs: the torch engine every name; ONNX Runtime float32 and integer weights.
TORCH_PRECISIONS = ("fp32", "bf16", "int8", "int4")
ONNX_PRECISIONS = ("fp32", "int8", "int4")
# `lmforge compare --variants`: the seed's quantization experiment (int4-rtn is int4).
COMPARE_VARIANTS = ("fp32", "bf16", "int8", "int8-asym", "int4-rtn", "int4-gptq", "int4-awq", "w8a8-sq", "w8a8-rtn",
                    "llm-int8")


def precision(name: str, allowed: tuple[str, ...] | None = None) -> Precision:
    """The precision a name (or alias) stands for; a clear error for unknown or unallowed names."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    found = PRECISIONS.get(key)
    choices = allowed or tuple(PRECISIONS)
    if found is None or not {found.name, name.strip().lower()} & set(choices):
        raise LmforgeError(f"unknown precision {name!r}; choose one of {', '.join(choices)}")
    return found


def torch_dtype(name: str):
    """float32 / fp32 / bfloat16 / bf16 / float16 / fp16 -> the torch dtype."""
    import torch  # only this function needs torch: the table itself is plain data

    p = PRECISIONS.get(ALIASES.get(name.lower(), name.lower()))
    if p is None or p.dtype is None:
        raise LmforgeError(f"unknown dtype {name!r}; choose one of float32, bfloat16, float16")
    return getattr(torch, p.dtype)


def dtype_precision(dtype) -> str:
    """The precision name of a torch dtype (torch.bfloat16 -> 'bf16')."""
    text = str(dtype).removeprefix("torch.")
    return ALIASES.get(text, text)
