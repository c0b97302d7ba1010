"""Number formats a model can be stored in: bit layouts, ranges and precision, computed."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NumberFormat:
    name: str
    bits: int
    sign_bits: int
    exponent_bits: int
    mantissa_bits: int
    max_value: float
    min_value: float
    smallest_normal: float | None
    epsilon: float | None  # gap between 1 and the next representable number
    decimal_digits: float | None

    @property
    def bytes(self) -> float:
        return self.bits / 8


_FLOATS = {"FP32": (torch.float32, 8, 23), "FP16": (torch.float16, 5, 10), "BF16": (torch.bfloat16, 8, 7)}


def number_formats() -> list[NumberFormat]:
    formats = []
    for name, (dtype, exp_bits, man_bits) in _FLOATS.items():
        info = torch.finfo(dtype)
        formats.append(NumberFormat(name, info.bits, 1, exp_bits, man_bits, info.max, info.min, info.tiny,
                                    info.eps, float(info.resolution and -torch.tensor(info.resolution).log10())))
    for bits in (8, 4):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        formats.append(NumberFormat(f"INT{bits}", bits, 1, 0, bits - 1, hi, lo, None, 1.0, None))
    return formats


def bit_pattern(value: float, fmt: str) -> str:
    """The bits of `value` in a format, grouped sign|exponent|mantissa (or two's complement)."""
    if fmt in _FLOATS:
        dtype, exp_bits, man_bits = _FLOATS[fmt]
        as_float = torch.tensor([value], dtype=dtype)
        width = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
        raw = int(as_float.view(width).item()) & ((1 << (1 + exp_bits + man_bits)) - 1)
        bits = format(raw, f"0{1 + exp_bits + man_bits}b")
        return f"{bits[0]} {bits[1:1 + exp_bits]} {bits[1 + exp_bits:]}"
    bits = int(fmt.removeprefix("INT"))
    q = max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, round(value)))
    return format(q & ((1 << bits) - 1), f"0{bits}b")


def stored_value(value: float, fmt: str) -> float:
    """What `value` becomes when stored in the format (rounded, saturated for integers)."""
    if fmt in _FLOATS:
        return float(torch.tensor([value], dtype=_FLOATS[fmt][0]).float().item())
    bits = int(fmt.removeprefix("INT"))
    return float(max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, round(value))))
