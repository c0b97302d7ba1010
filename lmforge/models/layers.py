"""lmforge's layers and the kernel each one picks for this CPU (measured once, see cpu_kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.cpu_kernels import (
    HALF_PRODUCT_MIN_ROWS_TO_CONVERT,
    fast_half_linear,
    half_products_are_slow,
    onednn_packing_works,
)
from lmforge.errors import ModelError
from lmforge.models.weights import FusedLinear
from lmforge.native import rms_norm_kernel


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = rms_norm_kernel()  # PyTorch's CPU rms_norm is ~7 kernels: 3x slower for a row, 30x for 512
        if kernel is not None and kernel.supports(x, self.weight) and not tracing():
            return kernel(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def tracing() -> bool:
    """Whether the model is being compiled or traced (native kernels are opaque to both)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# oneDNN (and PyTorch's ideep layer above it) cache a primitive per input shape, up to 1,024 each,
# and never free them: a server seeing every prompt length grew ~400 MB in 100 batches. Products
# therefore run on a bounded set of row counts: decode batches exactly, longer inputs in blocks of
# ROW_BLOCK rows plus a remainder padded to a multiple of ROW_STEP (at most ROW_STEP - 1 wasted rows).
EXACT_ROWS = 16
ROW_STEP = 16
ROW_BLOCK = 512


def row_shapes(rows: int) -> list[int]:
    """The row counts a product of `rows` rows is computed in (each from the bounded set)."""
    if rows <= EXACT_ROWS:
        return [rows]
    blocks, rest = divmod(rows, ROW_BLOCK)
    shapes = [ROW_BLOCK] * blocks
    if rest:
        shapes.append(rest if rest <= EXACT_ROWS else -(-rest // ROW_STEP) * ROW_STEP)
    return shapes


def product_on_bounded_shapes(x: torch.Tensor, product) -> torch.Tensor:
    """`product` (2-D rows -> 2-D rows) applied to x [..., in] through the shapes of `row_shapes`."""
    features = x.shape[-1]
    flat = x.reshape(-1, features)
    rows = flat.shape[0]
    shapes = [rows] if tracing() else row_shapes(rows)  # a traced graph keeps its dynamic axes
    outputs, start = [], 0
    for size in shapes:
        part = flat[start:start + size]
        if part.shape[0] < size:
            part = torch.cat([part, part.new_zeros(size - part.shape[0], features)])
        outputs.append(product(part)[:rows - start])
        start += size
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def bounded_row_counts(max_rows: int = ROW_BLOCK) -> list[int]:
    """Every row count `row_shapes` uses for inputs of up to max_rows rows."""
    return sorted({size for rows in range(1, max_rows + 1) for size in row_shapes(rows)})


def warm_up_products(module, max_rows: int = ROW_BLOCK) -> int:
    """Run each distinct product of `module` once at every bounded row count, so the kernels'
    per-shape state is built before traffic and memory does not creep up later; returns how many
    products ran (~0.3 s for the embedded model)."""
    if not isinstance(module, nn.Module):  # e.g. an ONNX Runtime model: nothing of ours to warm
        return 0
    seen, runs = set(), 0
    with torch.inference_mode():
        for layer in module.modules():
            if not isinstance(layer, DenseLinear):
                continue
            key = (layer.layout, layer.weight.dtype, layer.in_features, layer.out_features, layer.bias is not None)
            if key in seen:
                continue
            seen.add(key)
            for rows in bounded_row_counts(max_rows):
                layer(torch.zeros(rows, layer.in_features))
                runs += 1
    return runs


class DenseLinear(nn.Module):
    """y = x W^T + b with the weight in the layout the CPU kernels read fastest.

    Layouts: "plain" keeps W ([out, in]), the only layout with a fast bfloat16 kernel. Float32
    activations of a few rows (decoding) go to lmforge's native kernel where it is faster
    (`cpu_kernels.fast_half_linear`); otherwise an input in another dtype is cast to W's and
    back, and where half-precision arithmetic is emulated (AVX2) a many-row product converts W
    to float32.
    "transposed" keeps W^T ([in, out]) for float32: MKL's one-row product reads it ~1.4x faster.
    "packed" is oneDNN's prepacked float32 weight (`pack_()`): as fast for one row, 2-3x faster
    for a few rows (batched decode) and ~1.3x for prompts. A packed weight cannot be indexed,
    so the tied embedding's table (the output layer) stays transposed.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.layout = "plain"

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "DenseLinear":
        layer = cls(weight.shape[1], weight.shape[0], bias is not None)
        layer.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        layer.replace_weight(weight)
        return layer

    def replace_weight(self, weight: torch.Tensor) -> None:
        """Store W ([out, in]) in this layer's layout (float32 plain becomes transposed)."""
        if self.layout == "packed" and weight.dtype == torch.float32:
            stored = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 512)
        elif weight.dtype == torch.float32:
            self.layout, stored = "transposed", weight.t().contiguous()
        else:
            self.layout, stored = "plain", weight
        self.weight = nn.Parameter(stored, requires_grad=False)

    def pack_(self) -> bool:
        """Switch a float32 weight to oneDNN's packed layout where this build has it."""
        if self.weight.dtype != torch.float32 or self.layout == "packed" or not onednn_packing_works():
            return False
        weight = self.dense_weight()
        self.layout = "packed"
        self.replace_weight(weight)
        return True

    def dense_weight(self) -> torch.Tensor:
        """W as [out, in]: a view of the stored weight, except a copy for the packed layout
        (change weights through `replace_weight`)."""
        if self.layout == "packed":
            return self.weight.to_dense()
        return self.weight.t() if self.layout == "transposed" else self.weight

    def _plain_product(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        few_rows = x.numel() < HALF_PRODUCT_MIN_ROWS_TO_CONVERT * self.in_features
        if few_rows and x.dtype == torch.float32 and weight.dtype != torch.float32 and not tracing():
            kernels = fast_half_linear(weight.dtype)
            if kernels is not None and kernels.supports(x, weight):
                float_bias = bias.float().contiguous() if bias is not None else None
                return kernels.linear_unchecked(x.contiguous(), weight, float_bias)
        if weight.dtype != torch.float32 and not few_rows and half_products_are_slow(weight.dtype):
            y = F.linear(x.float(), weight.float(), bias.float() if bias is not None else None)
            return y.to(x.dtype)
        if x.dtype == weight.dtype:
            return product_on_bounded_shapes(x, lambda rows: F.linear(rows, weight, bias))
        return product_on_bounded_shapes(x.to(weight.dtype), lambda rows: F.linear(rows, weight, bias)).to(x.dtype)

    def embedding(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of W: the table of a tied input embedding."""
        if self.layout == "packed":
            raise ModelError("a packed output layer cannot serve as the embedding table")
        return F.embedding(tokens, self.dense_weight()).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "packed":
            return product_on_bounded_shapes(
                x, lambda rows: torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], ""))
        if self.layout == "plain":
            return self._plain_product(x)
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


def pack_linears(module: nn.Module) -> int:
    """Pack every float32 DenseLinear inside `module`; returns how many were packed."""
    return sum(layer.pack_() for layer in module.modules() if isinstance(layer, DenseLinear))


def dense_layer(tensors, fused: FusedLinear, dtype: torch.dtype) -> DenseLinear:
    """The layer for the dense weights of `fused` stacked by rows (q|k|v, gate|up)."""
    weights = [tensors[n + ".weight"].to(dtype) for n in fused.parts]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    bias = torch.cat([tensors[n + ".bias"].to(dtype) for n in fused.parts]) if fused.bias else None
    return DenseLinear.from_weight(weight, bias)