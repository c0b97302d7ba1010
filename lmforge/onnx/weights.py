"""A checkpoint's linear layers as what the ONNX graph stores: float matrices or MatMulNBits blocks.

Quantized checkpoints keep their integer levels (nothing is rounded again); a float checkpoint
exported at int8/int4 is quantized here with round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.quant.rtn import PER_GROUP, QuantizedWeight, QuantSpec, quantize

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

def fused_layers(config: ModelConfig, layer: int) -> dict[str, tuple[list[str], bool]]:
    """lmforge's fused linear layers of one block -> (Hugging Face names stacked by rows, has bias)."""
    p = f"model.layers.{layer}."
    return {"qkv": ([p + f"self_attn.{n}_proj" for n in "qkv"], config.attention_bias),
            "o": ([p + "self_attn.o_proj"], False),
            "gate_up": ([p + "mlp.gate_proj", p + "mlp.up_proj"], False),
            "down": ([p + "mlp.down_proj"], False)}


class LayerSource:
    """Reads the linear layers of a checkpoint for export at a precision ("fp32", "int8", "int4")."""

    def __init__(self, checkpoint, precision: str, group_size: int = 32, symmetric: bool = True):
        self.tensors = checkpoint.tensors
        self.quantization = checkpoint.quantization
        self.precision = precision
        if checkpoint.quantization is not None:
            _, self.body_spec, self.head_spec = checkpoint.quantization
        elif precision == "fp32":
            self.body_spec = self.head_spec = None
        else:
            bits = 4 if precision == "int4" else 8
            self.body_spec = QuantSpec(bits, symmetric, PER_GROUP if bits == 4 else "channel", group_size)
            self.head_spec = QuantSpec(8, True, "channel")  # an INT4 head costs too much quality

    def _dense(self, names: list[str], bias: bool) -> DenseWeight:
        w = torch.cat([self.tensors[n + ".weight"].float() for n in names])
        b = torch.cat([self.tensors[n + ".bias"].float() for n in names]) if bias else None
        return DenseWeight(w, b)

    def layer(self, names: list[str], bias: bool, head: bool = False) -> DenseWeight | NBitsWeight:
        from lmforge.quant.serialize import read_fused

        spec = self.head_spec if head else self.body_spec
        stored = all(f"{n}.weight_shape" in self.tensors for n in names)
        if self.quantization is not None and stored:
            qw, b = read_fused(self.tensors, names, spec, bias)
            return to_nbits(qw, None if b is None else b.float())
        dense = self._dense(names, bias)
        if spec is None or self.quantization is not None:
            return dense  # float in the checkpoint: stays float
        return to_nbits(quantize(dense.weight, spec), dense.bias)

    def head(self) -> DenseWeight | NBitsWeight:
        name = "lm_head" if ("lm_head.weight" in self.tensors or "lm_head.weight_shape" in self.tensors) \
            else "model.embed_tokens"
        return self.layer([name], False, head=True)

    def norm(self, name: str) -> np.ndarray:
        return self.tensors[name].float().numpy()

    def embedding_table(self) -> np.ndarray | None:
        """The float embedding table, or None when a quantized head holds it (tied)."""
        if "model.embed_tokens.weight" not in self.tensors:
            return None
        return self.tensors["model.embed_tokens.weight"].float().numpy()
