"""lmforge.models.layers: products run on a bounded set of row counts, so per-shape kernel state
(oneDNN's and ideep's primitive caches) stays bounded however many prompt lengths a server sees."""

import ctypes
import random

import pytest
import torch

from lmforge.cpu_kernels import onednn_packing_works
from lmforge.models.layers import (
    EXACT_ROWS,
    ROW_BLOCK,
    ROW_STEP,
    DenseLinear,
    bounded_row_counts,
    product_on_bounded_shapes,
    row_shapes,
    warm_up_products,
)


def test_row_shapes_cover_every_row_from_a_small_set_with_little_padding():
    allowed = set(bounded_row_counts())
    assert len(allowed) <= EXACT_ROWS + ROW_BLOCK // ROW_STEP
    assert set(range(1, EXACT_ROWS + 1)) <= allowed  # decode batches run unpadded
    for rows in range(1, 3 * ROW_BLOCK + 40):
        shapes = row_shapes(rows)
        assert set(shapes) <= allowed, rows
        assert 0 <= sum(shapes) - rows < ROW_STEP, rows


def test_products_on_bounded_shapes_equal_the_direct_product():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=gen)
    seen = []

    def product(rows):
        seen.append(rows.shape[0])
        return rows @ weight.t()

    for rows in [1, 7, 16, 17, 100, ROW_BLOCK, ROW_BLOCK + 3, 2 * ROW_BLOCK + 100]:
        x = torch.randn(1, rows, 40, generator=gen)
        y = product_on_bounded_shapes(x, product)
        assert y.shape == (1, rows, 24)
        assert torch.allclose(y, x @ weight.t(), atol=1e-5)
    assert set(seen) <= set(bounded_row_counts())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_layers_give_the_same_product_at_any_row_count(dtype):
    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(32, 48, generator=gen), torch.randn(32, generator=gen)
    layer = DenseLinear.from_weight(weight.to(dtype), bias.to(dtype))
    if dtype == torch.float32:
        layer.pack_()
    for rows in [3, 33, 300, 700]:
        x = torch.randn(rows, 48, generator=gen)
        expected = torch.nn.functional.linear(x.to(dtype).float(), weight.to(dtype).float(), bias.to(dtype).float())
        tolerance = 1e-4 if dtype == torch.float32 else 0.5
        assert (layer(x.to(dtype)).float() - expected).abs().max() < tolerance, rows


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_in_use_mb() -> float:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().uordblks / 2**20


@pytest.mark.skipif(not onednn_packing_works(), reason="this PyTorch build has no oneDNN packing")
def test_heap_stays_flat_across_many_prompt_lengths_after_warm_up():
    """Measured on an embedded-sized layer: 200 products of random lengths grew the heap by ~100 MB
    when each length reached oneDNN as a new shape; after warm-up they add almost nothing."""
    try:
        _heap_in_use_mb()
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    layer = DenseLinear.from_weight(torch.randn(1000, 576))  # a shape no other test uses
    assert layer.pack_()
    assert warm_up_products(layer) == len(bounded_row_counts())
    rng = random.Random(0)
    before = _heap_in_use_mb()
    with torch.inference_mode():
        for _ in range(200):
            layer(torch.randn(rng.randint(EXACT_ROWS + 1, ROW_BLOCK), 576))
    assert _heap_in_use_mb() - before < 16
