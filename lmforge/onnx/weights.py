"""A checkpoint's linear layers as what the ONNX graph stores: float matrices or MatMulNBits blocks.

Quantized checkpoints keep their integer levels (nothing is rounded again); a float checkpoint
exported at int8/int4 is quantized here with round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.models.weights import EMBEDDING, OUTPUT, FusedLinear, WeightMap, is_quantized
from lmforge.quant.recipe import PER_GROUP, QuantSpec
from lmforge.quant.rtn import QuantizedWeight, quantize
from lmforge.quant.serialize import read_fused

# Block size for weights quantized per channel or per tensor: their one scale is repeated per block.
PER_CHANNEL_BLOCK = 32


@dataclass
class DenseWeight:
    weight: torch.Tensor  # [out, in] float32
    bias: torch.Tensor | None


@dataclass
class NBitsWeight:
    """MatMulNBits inputs: B [N, blocks, block*bits/8] uint8, scales [N, blocks], zero points or None."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    input_perm: np.ndarray | None  # act-order: gather input columns in this order first
    bits: int
    block_size: int
    in_features: int
    out_features: int
    bias: torch.Tensor | None


def _pack_bits(levels: np.ndarray, bits: int) -> np.ndarray:
    """uint8 levels [..., L] (L even for 4 bits) -> bytes, low nibble first."""
    if bits == 8:
        return levels.astype(np.uint8)
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def to_nbits(qw: QuantizedWeight, bias: torch.Tensor | None) -> NBitsWeight:
    """Integer levels -> MatMulNBits layout with exactly the same dequantized values."""
    bits = qw.spec.bits
    if bits not in (4, 8):
        raise LmforgeError(f"ONNX export takes 4- or 8-bit weights, got {bits}")
    rows, cols = qw.shape
    groups = qw.column_groups()
    perm = None
    if not bool((groups[1:] >= groups[:-1]).all()):  # act-order: make each group contiguous
        order = torch.sort(groups, stable=True).indices
        perm, groups = order, groups[order]
    q = qw.q if perm is None else qw.q[:, perm]
    if qw.spec.granularity == PER_GROUP and qw.scale.shape[1] > 1:
        block = qw.spec.group_width(cols)
        if block < 16 or block & (block - 1):
            raise LmforgeError(f"MatMulNBits needs a power-of-two block of at least 16; the group size is {block}")
        if not torch.equal(groups, torch.arange(cols) // block):
            raise LmforgeError("the weight's column groups do not line up with MatMulNBits blocks")
        scale, zero = qw.scale, qw.zero
    else:  # one scale per row (or tensor, or a group as wide as the row): repeat it for every block
        block = PER_CHANNEL_BLOCK
        n_blocks = -(-cols // block)
        scale = qw.scale[:, :1].expand(rows, n_blocks)
        zero = qw.zero[:, :1].expand(rows, n_blocks) if qw.zero is not None else None
    n_blocks = -(-cols // block)
    offset = 1 << (bits - 1)
    levels = q.to(torch.int32) + (offset if zero is None else 0)  # symmetric: default zero point 2^(bits-1)
    padded = torch.full((rows, n_blocks * block), offset if zero is None else 0, dtype=torch.int32)
    padded[:, :cols] = levels
    packed = _pack_bits(padded.numpy().astype(np.uint8), bits).reshape(rows, n_blocks, block * bits // 8)
    zero_points = None
    if zero is not None:
        z = zero.round().to(torch.int32).numpy().astype(np.uint8)
        if bits == 4:
            z = np.pad(z, ((0, 0), (0, n_blocks % 2)))
        zero_points = _pack_bits(z, bits).reshape(-1)
    return NBitsWeight(np.ascontiguousarray(packed), np.ascontiguousarray(scale.float().numpy()), zero_points,
                       None if perm is None else perm.numpy().astype(np.int64), bits, block, cols, rows, bias)


def dequantize_nbits(w: NBitsWeight) -> torch.Tensor:
    """The float [out, in] matrix a MatMulNBits weight stands for, in the original column order."""
    raw = torch.from_numpy(w.packed.reshape(w.out_features, -1).astype(np.int32))
    if w.bits == 4:
        raw = torch.stack([raw & 15, raw >> 4], dim=-1).flatten(1)
    n_blocks = w.scales.shape[1]
    if w.zero_points is None:
        zero = torch.full((w.out_features, n_blocks), float(1 << (w.bits - 1)))
    else:
        z = torch.from_numpy(w.zero_points.astype(np.int32)).reshape(w.out_features, -1)
        if w.bits == 4:
            z = torch.stack([z & 15, z >> 4], dim=-1).flatten(1)
        zero = z[:, :n_blocks].float()
    blocks = torch.arange(w.in_features) // w.block_size
    dense = (raw[:, : w.in_features].float() - zero[:, blocks]) * torch.from_numpy(w.scales)[:, blocks]
    if w.input_perm is not None:
        out = torch.empty_like(dense)
        out[:, torch.from_numpy(w.input_perm)] = dense
        dense = out
    return dense


# --- layers of a checkpoint ---------------------------------------------------------------------

class LayerSource:
    """Reads the linear layers of a checkpoint for export at a precision ("fp32", "int8", "int4")."""

    def __init__(self, checkpoint, precision: str, group_size: int = 32, symmetric: bool = True):
        self.tensors = checkpoint.tensors
        self.quantization = checkpoint.quantization
        self.precision = precision
        self.names = WeightMap(checkpoint.config)
        if checkpoint.quantization is not None:
            self.body_spec, self.head_spec = checkpoint.quantization.body, checkpoint.quantization.head
        elif precision == "fp32":
            self.body_spec = self.head_spec = None
        else:
            bits = 4 if precision == "int4" else 8
            self.body_spec = QuantSpec(bits, symmetric, PER_GROUP if bits == 4 else "channel", group_size)
            self.head_spec = QuantSpec(8, True, "channel")  # an INT4 head costs too much quality

    def _dense(self, fused: FusedLinear) -> DenseWeight:
        w = torch.cat([self.tensors[n + ".weight"].float() for n in fused.parts])
        b = torch.cat([self.tensors[n + ".bias"].float() for n in fused.parts]) if fused.bias else None
        return DenseWeight(w, b)

    def layer(self, fused: FusedLinear) -> DenseWeight | NBitsWeight:
        spec = self.head_spec if fused.module == OUTPUT else self.body_spec
        if self.quantization is not None and all(is_quantized(self.tensors, n) for n in fused.parts):
            qw, b = read_fused(self.tensors, fused, spec)
            return to_nbits(qw, None if b is None else b.float())
        dense = self._dense(fused)
        if spec is None or self.quantization is not None:
            return dense  # float in the checkpoint: stays float
        return to_nbits(quantize(dense.weight, spec), dense.bias)

    def block_layers(self, layer: int) -> dict[str, DenseWeight | NBitsWeight]:
        """Block `layer`'s fused linears, by attribute path (`attention.wqkv`, ...)."""
        return {path: self.layer(fused) for path, fused in self.names.block_linears(layer).items()}

    def block_norms(self, layer: int) -> dict[str, tuple[str, np.ndarray]]:
        """Block `layer`'s norms by attribute: (Hugging Face name, weight)."""
        return {attr: (name, self.norm(name)) for attr, name in self.names.block_norms(layer).items()}

    def head(self) -> DenseWeight | NBitsWeight:
        return self.layer(self.names.head(self.tensors))

    @property
    def head_is_embedding(self) -> bool:
        return self.names.head_is_embedding(self.tensors)

    def norm(self, name: str) -> np.ndarray:
        return self.tensors[name].float().numpy()

    def embedding_table(self) -> np.ndarray | None:
        """The float embedding table, or None when a quantized head holds it (tied)."""
        if EMBEDDING + ".weight" not in self.tensors:
            return None
        return self.tensors[EMBEDDING + ".weight"].float().numpy()
