"""GPTQ (Frantar et al., 2022): quantize a weight column by column, spreading each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs (H = 2 X^T X over calibration tokens).

Options as in the paper and AutoGPTQ: damping (a fraction of the mean diagonal added to H),
groups of input columns with their own scale, act-order (`desc_act`: columns in order of
decreasing Hessian diagonal, groups formed in that order) and lazy block updates.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.quant.rtn import PER_GROUP, PER_TENSOR, QuantizedWeight, QuantSpec, quantize_columns, range_params


class HessianAccumulator:
    """Running H = 2/n sum x^T x over the rows of every input seen."""

    def __init__(self, columns: int):
        self.sum = torch.zeros(columns, columns, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum += (x.t() @ x).double()
        self.rows += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if not self.rows:
            raise LmforgeError("GPTQ needs calibration inputs, but this layer saw none")
        return (2 * self.sum / self.rows).float()


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after damping; more damping if H is still not positive definite."""
    diag_mean = torch.diag(h).mean()
    for attempt in range(6):
        damped = h + torch.eye(h.shape[0]) * (damp * 10 ** attempt) * diag_mean
        factor, info = torch.linalg.cholesky_ex(damped.double())
        if info == 0:
            inverse = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(inverse, upper=True).float()
    raise LmforgeError("GPTQ: the Hessian is not positive definite even with heavy damping")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, damp: float = 0.01,
                  desc_act: bool = False, block_size: int = 128) -> QuantizedWeight:
    if spec.granularity == PER_TENSOR:
        raise LmforgeError("GPTQ quantizes per channel or per group, not per tensor")
    if not 0 < damp < 1:
        raise LmforgeError(f"GPTQ damping must be in (0, 1), got {damp}")
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h = hessian.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if desc_act else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    h_inv = _inverse_hessian_factor(h, damp)

    width = spec.group_width(cols)
    grouped = spec.granularity == PER_GROUP
    if grouped:
        block_size = width  # group boundaries then fall on block starts
    levels = torch.zeros_like(w)
    scales, zeros = [], []
    if not grouped:
        scale, zero = range_params(w.amin(1, keepdim=True), w.amax(1, keepdim=True), spec)
        scales.append(scale)
        zeros.append(zero)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        block_inv = h_inv[start:stop, start:stop]
        if grouped:  # this block is one group: its range as the updates left it
            scale, zero = range_params(block.amin(1, keepdim=True), block.amax(1, keepdim=True), spec)
            scales.append(scale)
            zeros.append(zero)
        for i in range(stop - start):
            column = block[:, i:i + 1]
            q = quantize_columns(column, scale, zero, spec)
            levels[:, start + i] = q[:, 0]
            dequantized = (q - zero) * scale if zero is not None else q * scale
            error = (column - dequantized) / block_inv[i, i]
            block[:, i:] -= error @ block_inv[i:i + 1, i:]
            errors[:, i] = error[:, 0]
        w[:, stop:] -= errors @ h_inv[start:stop, stop:]

    inverse_perm = torch.argsort(perm)
    g_idx = None
    if desc_act and grouped:
        g_idx = (torch.arange(cols) // width)[inverse_perm]
    scale = torch.cat(scales, dim=1)
    zero = torch.cat(zeros, dim=1) if not spec.symmetric else None
    return QuantizedWeight(levels[:, inverse_perm].to(spec.storage_dtype()), scale.contiguous(),
                           zero.contiguous() if zero is not None else None, spec, g_idx)
