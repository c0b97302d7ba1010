"""Round-to-nearest quantization of a weight matrix, and the error it causes.

Symmetric:  scale = max|w| / qmax,             q = clamp(round(w / scale), -qmax, qmax)
Asymmetric: scale = (max - min) / (2^bits - 1), zero = round(-min / scale),
            q = clamp(round(w / scale) + zero, 0, 2^bits - 1),  w ~ (q - zero) * scale
Granularity: one scale for the tensor, one per output channel (row), or one per group of
`group_size` consecutive input columns in each row (the last group may be shorter, as in GPTQ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.quant.recipe import PER_CHANNEL, PER_GROUP, PER_TENSOR, QuantSpec

__all__ = ["PER_CHANNEL", "PER_GROUP", "PER_TENSOR", "QuantSpec", "QuantizedWeight", "quantize"]

@dataclass
class QuantizedWeight:
    """Integer levels of a [rows, cols] weight with a scale (and zero point) per row and group."""

    q: torch.Tensor  # [rows, cols] int8 (uint8 for asymmetric 8-bit), original column order
    scale: torch.Tensor  # [rows, groups] float32
    zero: torch.Tensor | None  # [rows, groups] float32 holding integers (asymmetric), else None
    spec: QuantSpec
    g_idx: torch.Tensor | None = None  # [cols] group of each column; None: column // group width

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def column_groups(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(self.q.shape[1]) // self.spec.group_width(self.q.shape[1])

    def dequantize(self) -> torch.Tensor:
        groups = self.column_groups()
        q = self.q.float()
        if self.zero is not None:
            q = q - self.zero[:, groups]
        return q * self.scale[:, groups]

    def rows(self, start: int, stop: int) -> "QuantizedWeight":
        """The slice of output rows start:stop (e.g. q out of a fused q|k|v weight)."""
        zero = self.zero[start:stop] if self.zero is not None else None
        return QuantizedWeight(self.q[start:stop], self.scale[start:stop], zero, self.spec, self.g_idx)

    @staticmethod
    def concat_rows(parts: list["QuantizedWeight"]) -> "QuantizedWeight":
        """Stack weights that read the same input (q, k, v) into one fused weight."""
        first = parts[0]
        if any(p.spec != first.spec for p in parts) or any(
                (p.g_idx is None) != (first.g_idx is None) or
                (p.g_idx is not None and not torch.equal(p.g_idx, first.g_idx)) for p in parts):
            raise LmforgeError("fused weights must share their quantization scheme and column groups")
        zero = torch.cat([p.zero for p in parts]) if first.zero is not None else None
        return QuantizedWeight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), zero,
                               first.spec, first.g_idx)


def range_params(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero point) that map [lo, hi] (per row) onto the integer grid."""
    tiny = torch.finfo(torch.float32).tiny
    if spec.symmetric:
        return (torch.maximum(lo.abs(), hi.abs()).clamp_min(tiny) / spec.qmax), None
    lo, hi = lo.clamp_max(0), hi.clamp_min(0)  # zero stays representable
    scale = ((hi - lo) / spec.qmax).clamp_min(tiny)
    return scale, torch.round(-lo / scale)


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                     spec: QuantSpec) -> torch.Tensor:
    """Integer levels of w [rows, k] with per-row scale/zero [rows, 1]; returned as float."""
    q = torch.round(w / scale)
    if zero is not None:
        q = q + zero
    return q.clamp_(spec.qmin, spec.qmax)


def quantize(weight: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    if weight.dim() != 2:
        raise LmforgeError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    w = weight.float()
    width = spec.group_width(cols)
    if spec.granularity == PER_TENSOR:
        lo, hi = w.min().expand(rows, 1), w.max().expand(rows, 1)
        scale, zero = range_params(lo, hi, spec)
        q = quantize_columns(w, scale, zero, spec)
    else:
        scales, zeros, levels = [], [], []
        for start in range(0, cols, width):
            block = w[:, start:start + width]
            scale, zero = range_params(block.amin(1, keepdim=True), block.amax(1, keepdim=True), spec)
            levels.append(quantize_columns(block, scale, zero, spec))
            scales.append(scale)
            zeros.append(zero)
        q, scale = torch.cat(levels, dim=1), torch.cat(scales, dim=1)
        zero = torch.cat(zeros, dim=1) if not spec.symmetric else None
    return QuantizedWeight(q.to(spec.storage_dtype()), scale.contiguous(),
                           zero.contiguous() if zero is not None else None, spec)


@dataclass(frozen=True)
class QuantError:
    mse: float
    max_abs: float
    sqnr_db: float  # signal-to-quantization-noise ratio

    def to_dict(self) -> dict:
        return vars(self)


def quantization_error(original: torch.Tensor, approximation: torch.Tensor) -> QuantError:
    diff = original.float() - approximation.float()
    noise = diff.pow(2).mean().item()
    signal = original.float().pow(2).mean().item()
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise)
    return QuantError(noise, diff.abs().max().item(), sqnr)
