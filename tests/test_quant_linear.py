"""Integer layers against the float computation with their dequantized weights."""

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.quant.linear import Int4Linear, Int8Linear, W8A8Linear
from lmforge.quant.rtn import PER_CHANNEL, PER_GROUP, PER_TENSOR, QuantizedWeight, QuantSpec, quantize


def layer_data(rows=96, cols=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05, torch.randn(5, cols, generator=g),
            torch.randn(rows, generator=g))


SPECS_8 = [QuantSpec(8, True, PER_CHANNEL), QuantSpec(8, False, PER_CHANNEL), QuantSpec(8, True, PER_GROUP, 64),
           QuantSpec(8, False, PER_GROUP, 32), QuantSpec(8, False, PER_TENSOR)]
SPECS_4 = [QuantSpec(4, True, PER_GROUP, 64), QuantSpec(4, False, PER_GROUP, 32), QuantSpec(4, True, PER_CHANNEL),
           QuantSpec(4, False, PER_GROUP, 128)]


@pytest.mark.parametrize("spec", SPECS_8 + SPECS_4, ids=str)
@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_equals_dequantized_float(spec, act_dtype):
    w, x, b = layer_data()
    qw = quantize(w, spec)
    layer = (Int8Linear if spec.bits == 8 else Int4Linear)(qw, b, act_dtype)
    expected = x @ qw.dequantize().t() + b
    got = layer(x)
    assert got.shape == expected.shape and got.dtype == x.dtype
    tolerance = 1e-4 if act_dtype == torch.float32 else 0.05  # bf16 activations: 8 mantissa bits
    assert (got - expected).abs().max() < tolerance * expected.abs().max()


def test_layers_keep_integer_weights_only():
    w, _, _ = layer_data(rows=256, cols=512)
    int8 = Int8Linear(quantize(w, QuantSpec(8)), None)
    int4 = Int4Linear(quantize(w, QuantSpec(4, True, PER_GROUP, 128)), None)
    assert int8.q.dtype == torch.int8 and int4.packed.dtype == torch.uint8
    assert not [p for p in list(int8.parameters()) + list(int4.parameters())]
    dense = w.numel() * 4
    assert int8.weight_bytes() < 0.27 * dense
    assert int4.weight_bytes() < 0.15 * dense


def test_column_groups_out_of_order_act_order():
    """GPTQ act-order groups columns out of order; the layer permutes its input to match."""
    w, x, b = layer_data(cols=256)
    qw = quantize(w, QuantSpec(4, True, PER_GROUP, 64))
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(3))
    shuffled = QuantizedWeight(qw.q, qw.scale, None, qw.spec, g_idx=(torch.arange(256) // 64)[perm])
    expected = x @ shuffled.dequantize().t()
    for cls in (Int4Linear,):
        layer = cls(shuffled, None, torch.float32)
        assert layer.input_perm is not None
        assert (layer(x) - expected).abs().max() < 1e-4
    qw8 = quantize(w, QuantSpec(8, True, PER_GROUP, 64))
    shuffled8 = QuantizedWeight(qw8.q, qw8.scale, None, qw8.spec, g_idx=(torch.arange(256) // 64)[perm])
    assert (Int8Linear(shuffled8, None, torch.float32)(x) - x @ shuffled8.dequantize().t()).abs().max() < 1e-4


def test_int8_rows_serve_as_a_tied_embedding():
    w, _, _ = layer_data(rows=50, cols=64)
    for spec in (QuantSpec(8, True), QuantSpec(8, False)):
        qw = quantize(w, spec)
        tokens = torch.tensor([[3, 7, 49]])
        rows = Int8Linear(qw, None, torch.float32).embedding(tokens, torch.float32)
        assert torch.allclose(rows[0], qw.dequantize()[tokens[0]], atol=1e-6)


@pytest.mark.parametrize("spec", [QuantSpec(4, True, PER_GROUP, 32), QuantSpec(4, False, PER_GROUP, 64)], ids=str)
def test_int4_rows_serve_as_a_tied_embedding(spec):
    w, _, _ = layer_data(rows=50, cols=200)
    qw = quantize(w, spec)
    layer = Int4Linear(qw, None, torch.float32, keep_rows=True)
    assert layer.row_levels.dtype == torch.uint8 and layer.row_levels.shape == (50, 100)
    tokens = torch.tensor([[3, 7], [49, 0]])
    assert torch.allclose(layer.embedding(tokens, torch.float32), qw.dequantize()[tokens], atol=1e-6)
    with pytest.raises(LmforgeError, match="keeps no rows"):
        Int4Linear(qw, None).embedding(tokens, torch.float32)


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_w8a8_is_close_to_float(granularity):
    w, x, b = layer_data()
    qw = quantize(w, QuantSpec(8, True, PER_CHANNEL))
    layer = W8A8Linear(qw, b, torch.float32, granularity)
    expected = x @ qw.dequantize().t() + b
    assert (layer(x) - expected).abs().max() < 0.02 * expected.abs().max()


def test_llm_int8_takes_the_outlier_path_when_it_should():
    w, x, b = layer_data()
    qw = quantize(w, QuantSpec(8, True, PER_CHANNEL))
    x = x.clone()
    x[2, 17] = 40.0  # one huge activation, as LLMs have in a few feature dimensions
    plain = W8A8Linear(qw, b, torch.float32, "token")
    outlier_aware = W8A8Linear(qw, b, torch.float32, "token", outlier_threshold=6.0)
    assert plain.outlier_columns(x).numel() == 0
    assert outlier_aware.outlier_columns(x).tolist() == [17]
    assert outlier_aware.outlier_columns(x.clamp(-5, 5)).numel() == 0  # nothing above the threshold
    expected = x @ qw.dequantize().t() + b
    err_plain = (plain(x) - expected)[2].abs().max()
    err_outlier = (outlier_aware(x) - expected)[2].abs().max()
    # Without decomposition the huge value sets row 2's scale and crushes its other entries.
    assert err_outlier < err_plain / 5


def test_bad_inputs():
    w, _, _ = layer_data(cols=256)
    with pytest.raises(LmforgeError, match="8-bit"):
        Int8Linear(quantize(w, QuantSpec(4)), None)
    with pytest.raises(LmforgeError, match="group sizes"):
        Int4Linear(quantize(w, QuantSpec(4, True, PER_GROUP, 16)), None)
    with pytest.raises(LmforgeError, match="W8A8"):
        W8A8Linear(quantize(w, QuantSpec(8, False)), None)


def test_int8_matmul_equals_the_int32_product_on_this_cpu():
    from lmforge.quant.linear import int8_matmul

    g = torch.Generator().manual_seed(0)
    xq = torch.randint(-127, 128, (33, 576), dtype=torch.int8, generator=g)
    q_t = torch.randint(-127, 128, (576, 96), dtype=torch.int8, generator=g)
    assert torch.equal(int8_matmul(xq, q_t), torch._int_mm(xq, q_t).float())
