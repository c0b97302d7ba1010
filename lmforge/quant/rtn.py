"""Round-to-nearest quantization of a weight matrix, and the error it causes.

Symmetric:  scale = max|w| / qmax,             q = clamp(round(w / scale), -qmax, qmax)
Asymmetric: scale = (max - min) / (2^bits - 1), zero = round(-min / scale),
            q = clamp(round(w / scale) + zero, 0, 2^bits - 1),  w ~ (q - zero) * scale
Granularity: one scale for the tensor, one per output channel (row), or one per group of
`group_size` consecutive input columns in each row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError

PER_TENSOR = "tensor"
PER_CHANNEL = "channel"
PER_GROUP = "group"


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True
    granularity: str = PER_CHANNEL
    group_size: int = 128

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 8):
            raise LmforgeError(f"bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.granularity not in (PER_TENSOR, PER_CHANNEL, PER_GROUP):
            raise LmforgeError(f"granularity must be tensor, channel or group, got {self.granularity!r}")
        if self.granularity == PER_GROUP and self.group_size < 1:
            raise LmforgeError("group_size must be positive")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


@dataclass
class QuantizedTensor:
    q: torch.Tensor  # int8 (values fit the spec's range), shape [rows, cols]
    scale: torch.Tensor  # broadcastable to [rows, groups, 1]
    zero: torch.Tensor | None  # integer zero points (asymmetric) or None
    spec: QuantSpec

    def dequantize(self) -> torch.Tensor:
        rows, cols = self.q.shape
        grouped = self.q.float().reshape(rows, -1, self._group(cols))
        if self.zero is not None:
            grouped = grouped - self.zero
        return (grouped * self.scale).reshape(rows, cols)

    def _group(self, cols: int) -> int:
        return self.spec.group_size if self.spec.granularity == PER_GROUP else cols


def quantize(weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    if weight.dim() != 2:
        raise LmforgeError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    w = weight.float()
    if spec.granularity == PER_GROUP:
        if cols % spec.group_size:
            raise LmforgeError(f"group size {spec.group_size} does not divide the input dimension {cols}")
        grouped = w.reshape(rows, cols // spec.group_size, spec.group_size)
        reduce_dims: tuple[int, ...] = (-1,)
    else:
        grouped = w.reshape(rows, 1, cols)
        reduce_dims = (0, 1, 2) if spec.granularity == PER_TENSOR else (-1,)
    tiny = torch.finfo(torch.float32).tiny
    if spec.symmetric:
        scale = grouped.abs().amax(dim=reduce_dims, keepdim=True).clamp_min(tiny) / spec.qmax
        q = torch.clamp(torch.round(grouped / scale), spec.qmin, spec.qmax)
        zero = None
    else:
        lo = grouped.amin(dim=reduce_dims, keepdim=True).clamp_max(0)
        hi = grouped.amax(dim=reduce_dims, keepdim=True).clamp_min(0)  # zero stays representable
        scale = ((hi - lo) / spec.qmax).clamp_min(tiny)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(grouped / scale) + zero, spec.qmin, spec.qmax)
    return QuantizedTensor(q.reshape(rows, cols).to(torch.uint8 if spec.qmax > 127 else torch.int8), scale, zero,
                           spec)


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
