"""The one table of precision names, and that every command means the same by each name."""

import inspect

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.precision import (COMPARE_VARIANTS, INT4_GROUP, ONNX_PRECISIONS, PRECISIONS, TORCH_PRECISIONS,
                               dtype_precision, precision, torch_dtype)


def test_names_aliases_and_dtypes():
    assert precision("int4-rtn") is precision("int4") is PRECISIONS["int4"]
    assert precision("BF16").dtype == "bfloat16" and precision("bfloat16") is precision("bf16")
    assert torch_dtype("fp32") is torch.float32 and torch_dtype("bfloat16") is torch.bfloat16
    assert dtype_precision(torch.bfloat16) == "bf16" and dtype_precision(torch.float32) == "fp32"
    assert precision("int8").bits == 8 and precision("fp32").bits == 32 and precision("int4").quantized
    with pytest.raises(LmforgeError, match="unknown precision 'int3'"):
        precision("int3")
    with pytest.raises(LmforgeError, match="choose one of fp32, int8, int4"):
        precision("bf16", ONNX_PRECISIONS)
    with pytest.raises(LmforgeError, match="unknown dtype"):
        torch_dtype("int8")
    assert set(TORCH_PRECISIONS) | set(ONNX_PRECISIONS) <= set(PRECISIONS)
    assert all(precision(name, COMPARE_VARIANTS) for name in COMPARE_VARIANTS)


def test_int4_is_one_format_everywhere():
    """RTN, symmetric, groups of 32: deploy, the ONNX export and the offline benchmark all read it here."""
    from lmforge.onnx.export import export_onnx

    recipe = precision("int4").recipe
    assert (recipe.method, recipe.bits, recipe.symmetric, recipe.granularity, recipe.group_size) == \
        ("rtn", 4, True, "group", INT4_GROUP)
    assert inspect.signature(export_onnx).parameters["group_size"].default == INT4_GROUP
    assert precision("int4-gptq").recipe.group_size == precision("int4-awq").recipe.group_size == INT4_GROUP


def test_descriptions_follow_the_recipes():
    assert precision("w8a8-sq").description == "smoothquant 8-bit sym per channel, int8 activations per token"
    assert precision("int8-asym").description == "rtn 8-bit asym per channel"
    assert precision("bf16").description == "bfloat16"
