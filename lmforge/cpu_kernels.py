"""Which of PyTorch's CPU kernels are fast on this machine, measured once on first use.

The same PyTorch build runs on CPUs with and without AVX-512 BF16/VNNI/AMX, and its fastest path
for a product differs between them by up to 100x; layers ask here instead of guessing from flags.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

from lmforge.native import HalfLinearKernels, half_linear_kernels


def _best_time(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@functools.cache
def onednn_packing_works() -> bool:
    """Whether this build can prepack float32 weights for oneDNN's matrix products."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), 8)
        return bool(torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), packed, None, "none", [], "").sum() == 4)
    except (RuntimeError, AttributeError):
        return False


# Below this many rows a half-precision product beats converting the weight to float32 even
# where half-precision arithmetic is emulated (measured on AVX2: the crossover is ~24 rows).
HALF_PRODUCT_MIN_ROWS_TO_CONVERT = 32


@functools.cache
def half_products_are_slow(dtype: torch.dtype) -> bool:
    """Whether a 64-row bfloat16/float16 product is slower than converting the weight to float32
    and multiplying there (CPUs without native bf16/fp16 arithmetic: 5x at 512 rows on AVX2)."""
    weight = torch.randn(1024, 512).to(dtype)
    x = torch.randn(64, 512)
    x_half = x.to(dtype)
    return _best_time(lambda: F.linear(x, weight.float())) < _best_time(lambda: F.linear(x_half, weight))


@functools.cache
def fast_half_linear(dtype: torch.dtype) -> HalfLinearKernels | None:
    """lmforge's own kernels for float32 activations x bfloat16/float16 weights (few rows), where
    they build and beat PyTorch's one-row product (AVX2: ~2x for a layer in cache, ~1.2x from
    memory, 2-3x for 2-16 rows); None where PyTorch's own kernel is as fast (e.g. AVX512-BF16)."""
    kernels = half_linear_kernels()
    if kernels is None:
        return None
    weight = torch.randn(3072, 576).to(dtype)
    x = torch.randn(1, 576)
    ours = _best_time(lambda: kernels.linear(x, weight), repeats=5)
    theirs = _best_time(lambda: F.linear(x.to(dtype), weight).float(), repeats=5)
    return kernels if ours < theirs else None


@functools.cache
def int8_products_are_fast() -> bool:
    """Whether this CPU multiplies int8 matrices at least half as fast as float32 ones.

    `torch._int_mm` is fast with VNNI/AMX; on CPUs without them (AVX2 only) it falls back to a
    path ~100x slower than a float32 product, so the same integer arithmetic is better done there
    as a float32 product of the integer values."""
    a = torch.randint(-127, 128, (256, 512), dtype=torch.int8)
    b = torch.randint(-127, 128, (512, 512), dtype=torch.int8)
    af, bf = a.float(), b.float()
    return _best_time(lambda: torch._int_mm(a, b)) <= 2 * _best_time(lambda: af @ bf)
