"""Linear layers that keep integer weights in memory and compute with PyTorch's integer kernels.

- Int8Linear: weight-only INT8, `_weight_int8pack_mm` (per-channel scale; groups as a sum of
  per-group products; an asymmetric zero point as a correction term).
- Int4Linear: weight-only INT4, `_weight_int4pack_mm_for_cpu` (group-wise scale and zero).
- W8A8Linear: INT8 weights and dynamically quantized INT8 activations, multiplied with
  `torch._int_mm` (int32 accumulation); with an outlier threshold it is LLM.int8(): input
  columns holding a value above the threshold stay in floating point.

The weight-only kernels are fast with bfloat16 activations (NOTES.md): layers cast their input to
their `act_dtype` and their output back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.cpu_kernels import int8_products_are_fast
from lmforge.errors import LmforgeError
from lmforge.quant.rtn import PER_GROUP, QuantizedWeight

INT4_KERNEL_GROUPS = (256, 128, 64, 32)


def _group_order(qw: QuantizedWeight) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Column permutation that makes every group contiguous (None when it already is)."""
    groups = qw.column_groups()
    if bool((groups[1:] >= groups[:-1]).all()):
        return None, groups
    perm = torch.sort(groups, stable=True).indices
    return perm, groups[perm]


class _QuantLinear(nn.Module):
    in_features: int
    out_features: int

    def _flat_input(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.input_perm is not None:
            x2 = x2.index_select(1, self.input_perm)
        return x2

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())


class Int8Linear(_QuantLinear):
    """Weight-only INT8; one `_weight_int8pack_mm` per column group."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if qw.spec.bits != 8:
            raise LmforgeError(f"Int8Linear takes 8-bit weights, got {qw.spec.bits}")
        self.out_features, self.in_features = qw.shape
        self.act_dtype = act_dtype
        perm, groups = _group_order(qw)
        q = qw.q if perm is None else qw.q[:, perm]
        zero = qw.zero
        if q.dtype == torch.uint8:  # asymmetric 0..255 -> int8 with the zero point moved alike
            q = (q.to(torch.int16) - 128).to(torch.int8)
            zero = zero - 128
        # The kernel needs the input width to be a multiple of 16: pad with zero columns.
        self.padded_in = -(-self.in_features // 16) * 16
        q = F.pad(q, (0, self.padded_in - self.in_features))
        self.register_buffer("input_perm", perm)
        self.register_buffer("q", q.contiguous())
        self.register_buffer("scale", qw.scale.to(act_dtype).t().contiguous())  # [groups, out]
        # w = (q - z) s  =>  x.w = s (x.q) - (s z) sum(x)
        self.register_buffer("zero_term", None if zero is None else (qw.scale * zero).to(act_dtype).t().contiguous())
        bounds = torch.searchsorted(groups, torch.arange(qw.scale.shape[1] + 1))
        bounds[-1] = self.padded_in  # the padding joins the last group
        self.group_bounds = bounds.tolist()
        self.register_buffer("bias", None if bias is None else bias.to(act_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._flat_input(x).to(self.act_dtype)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        if len(self.group_bounds) == 2:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.q, self.scale[0])
            if self.zero_term is not None:
                y = y - x2.sum(-1, keepdim=True) * self.zero_term[0]
            return self._finish(y, x)
        y = None
        for g, (start, stop) in enumerate(zip(self.group_bounds[:-1], self.group_bounds[1:])):
            part = x2[:, start:stop]
            yg = torch.ops.aten._weight_int8pack_mm(part.contiguous(), self.q[:, start:stop].contiguous(),
                                                    self.scale[g])
            if self.zero_term is not None:
                yg = yg - part.sum(-1, keepdim=True) * self.zero_term[g]
            y = yg if y is None else y + yg
        return self._finish(y, x)

    def embedding(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the dequantized weight (a tied embedding table)."""
        if len(self.group_bounds) != 2 or self.input_perm is not None:
            raise LmforgeError("a tied embedding needs a per-channel INT8 output layer")
        rows = self.q[tokens, : self.in_features].to(dtype)
        if self.zero_term is not None:
            return rows * self.scale[0][tokens, None].to(dtype) - self.zero_term[0][tokens, None].to(dtype)
        return rows * self.scale[0][tokens, None].to(dtype)


def _kernel_group(columns: int, width: int) -> int:
    """The largest kernel group size that splits every quantization group (of `width` columns, the
    last one possibly shorter) exactly: then no input padding is needed."""
    remainder = columns % width
    for g in INT4_KERNEL_GROUPS:
        if width % g == 0 and remainder % g == 0:
            return g
    return next((g for g in INT4_KERNEL_GROUPS if width % g == 0), INT4_KERNEL_GROUPS[-1])


class Int4Linear(_QuantLinear):
    """Weight-only INT4 with `_weight_int4pack_mm_for_cpu`: w = (u - 8) * scale + zero, u in 0..15."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, act_dtype: torch.dtype = torch.bfloat16,
                 keep_rows: bool = False):
        super().__init__()
        if qw.spec.bits != 4:
            raise LmforgeError(f"Int4Linear takes 4-bit weights, got {qw.spec.bits}")
        self.out_features, self.in_features = out_features, in_features = qw.shape
        self.act_dtype = act_dtype
        perm, groups = _group_order(qw)
        q = (qw.q if perm is None else qw.q[:, perm]).to(torch.int32)
        width = qw.spec.group_width(in_features)
        if qw.spec.granularity == PER_GROUP and width not in INT4_KERNEL_GROUPS:
            raise LmforgeError(f"the INT4 kernel takes group sizes {', '.join(map(str, INT4_KERNEL_GROUPS))}; "
                               f"got {width}")
        group = _kernel_group(in_features, width)
        # Each kernel group takes the scale of the quantization group it lies in.
        owner = (torch.arange(0, -(-in_features // group) * group, group) // width).clamp_max(qw.scale.shape[1] - 1)
        scale = qw.scale[:, owner]
        zero = qw.zero[:, owner] if qw.zero is not None else None
        self.group = group
        padded_in = -(-in_features // group) * group
        padded_out = -(-out_features // 16) * 16  # the kernel packs rows in blocks of 16
        u = q + 8 if zero is None else q  # symmetric levels -7..7 -> 1..15
        kernel_zero = torch.zeros_like(scale) if zero is None else (8 - zero) * scale
        u = F.pad(u, (0, padded_in - in_features, 0, padded_out - out_features), value=8)
        scale = F.pad(scale, (0, 0, 0, padded_out - out_features), value=1.0)
        kernel_zero = F.pad(kernel_zero, (0, 0, 0, padded_out - out_features))
        self.padded_in = padded_in
        self.register_buffer("input_perm", perm)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1))
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale, kernel_zero], dim=-1).transpose(0, 1).to(act_dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(act_dtype))
        # A tied embedding reads rows, which the kernel's blocked layout cannot give: keep the
        # levels once more, two per byte in plain row order (as many bytes as the kernel's copy).
        self.register_buffer("row_levels", None)
        self.register_buffer("row_scale", None)
        self.register_buffer("row_zero", None)
        if keep_rows:
            if perm is not None:
                raise LmforgeError("a tied embedding needs an INT4 output layer without act-order")
            levels = F.pad(u[:out_features, :in_features], (0, in_features % 2)).to(torch.uint8)
            self.row_levels = levels[:, 0::2] | (levels[:, 1::2] << 4)
            self.row_scale = qw.scale.float().contiguous()
            self.row_zero = (qw.zero.float() if qw.zero is not None else torch.full_like(self.row_scale, 8.0))
            self.row_width = width

    def embedding(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the dequantized weight (a tied embedding table)."""
        if self.row_levels is None:
            raise LmforgeError("this INT4 layer keeps no rows for an embedding")
        packed = self.row_levels[tokens]
        levels = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)[..., : self.in_features].float()
        groups = torch.arange(self.in_features) // self.row_width
        scale, zero = self.row_scale[tokens][..., groups], self.row_zero[tokens][..., groups]
        return ((levels - zero) * scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._flat_input(x).to(self.act_dtype)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_and_zeros)
        if y.shape[-1] != self.out_features:
            y = y[:, : self.out_features]
        return self._finish(y, x)


def int8_matmul(xq: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [K, N] -> float32, summed exactly in int32 (VNNI/AMX) or, where integer
    products are slow, as float32 products of the same integers (exact while sums stay below 2^24)."""
    if int8_products_are_fast():
        return torch._int_mm(xq, q_t).float()
    return xq.float() @ q_t.float()


class W8A8Linear(_QuantLinear):
    """INT8 weights (per channel or tensor, symmetric) x INT8 activations quantized on the fly.

    activation_granularity: "token" (a scale per row of the input) or "tensor" (one scale).
    outlier_threshold: LLM.int8() -- input columns with any |x| above it are multiplied in
    floating point with their dequantized weight columns; the rest go through the int8 product.
    """

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, act_dtype: torch.dtype = torch.float32,
                 activation_granularity: str = "token", outlier_threshold: float | None = None):
        super().__init__()
        if qw.spec.bits != 8 or not qw.spec.symmetric or qw.spec.granularity == PER_GROUP:
            raise LmforgeError("W8A8 needs symmetric 8-bit weights with a scale per channel or tensor")
        if activation_granularity not in ("token", "tensor"):
            raise LmforgeError(f"activation granularity must be token or tensor, got {activation_granularity!r}")
        self.out_features, self.in_features = qw.shape
        self.act_dtype = act_dtype
        self.activation_granularity = activation_granularity
        self.outlier_threshold = outlier_threshold
        self.register_buffer("input_perm", None)
        self.register_buffer("q", qw.q.contiguous())
        self.register_buffer("scale", qw.scale[:, 0].float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(act_dtype))

    def outlier_columns(self, x2: torch.Tensor) -> torch.Tensor:
        """Indices of input columns that LLM.int8() keeps in floating point."""
        if self.outlier_threshold is None:
            return x2.new_zeros(0, dtype=torch.long)
        return ((x2.abs() > self.outlier_threshold).any(0)).nonzero().flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._flat_input(x).float()
        outliers = self.outlier_columns(x2)
        regular = x2
        if outliers.numel():
            regular = x2.index_fill(1, outliers, 0.0)
        if self.activation_granularity == "token":
            x_scale = regular.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
        else:
            x_scale = regular.abs().amax().clamp_min(1e-8).reshape(1, 1) / 127
        xq = torch.round(regular / x_scale).clamp_(-127, 127).to(torch.int8)
        y = int8_matmul(xq, self.q.t()) * x_scale * self.scale
        if outliers.numel():
            w_cols = self.q.index_select(1, outliers).float() * self.scale[:, None]
            y = y + x2.index_select(1, outliers) @ w_cols.t()
        return self._finish(y.to(self.act_dtype), x)

    def embedding(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.q[tokens].to(dtype) * self.scale[tokens, None].to(dtype)
