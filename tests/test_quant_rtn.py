import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.quant.rtn import (PER_CHANNEL, PER_GROUP, PER_TENSOR, QuantizedWeight, QuantSpec, quantization_error,
                               quantize)


def weights(rows=64, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w *= torch.linspace(0.2, 5.0, rows)[:, None]  # rows of very different ranges, as in real layers
    return w


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", [PER_TENSOR, PER_CHANNEL, PER_GROUP])
@pytest.mark.parametrize("cols", [256, 200])  # 200: the last group of 64 is shorter
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, granularity, cols):
    w = weights(cols=cols)
    qt = quantize(w, QuantSpec(bits, symmetric, granularity, group_size=64))
    assert int(qt.q.min()) >= qt.spec.qmin and int(qt.q.max()) <= qt.spec.qmax
    assert qt.scale.shape == (w.shape[0], qt.spec.num_groups(cols))
    step = qt.scale[:, qt.column_groups()]
    assert ((qt.dequantize() - w).abs() <= step / 2 * (1 + 1e-5) + 1e-12).all()


def test_finer_granularity_and_more_bits_lose_less():
    w = weights()

    def sqnr(**kw):
        return quantization_error(w, quantize(w, QuantSpec(**kw)).dequantize()).sqnr_db

    assert sqnr(bits=8, granularity=PER_TENSOR) < sqnr(bits=8, granularity=PER_CHANNEL)
    assert sqnr(bits=4, granularity=PER_CHANNEL) < sqnr(bits=4, granularity=PER_GROUP, group_size=32)
    assert sqnr(bits=4, granularity=PER_GROUP, group_size=128) < sqnr(bits=4, granularity=PER_GROUP, group_size=32)
    # Each extra bit is worth about 6 dB: 8-bit beats 4-bit by roughly 24 dB.
    gap = sqnr(bits=8) - sqnr(bits=4)
    assert 18 < gap < 30


def test_asymmetric_wins_on_one_sided_data():
    w = weights().abs()  # all positive, like post-ReLU activations
    sym = quantization_error(w, quantize(w, QuantSpec(8, True)).dequantize())
    asym = quantization_error(w, quantize(w, QuantSpec(8, False)).dequantize())
    assert asym.mse < sym.mse / 2


def test_symmetric_scale_follows_the_textbook_formula():
    w = torch.tensor([[0.5, -1.27, 0.0, 0.3]])
    qt = quantize(w, QuantSpec(8, True, PER_TENSOR))
    assert qt.scale.item() == pytest.approx(1.27 / 127)
    assert qt.q.tolist() == [[50, -127, 0, 30]]
    asym = quantize(torch.tensor([[0.0, 1.0, 2.55]]), QuantSpec(8, False, PER_TENSOR))
    assert asym.scale.item() == pytest.approx(2.55 / 255) and asym.zero.item() == 0
    assert asym.q.tolist() == [[0, 100, 255]]


def test_rows_and_concat_rows_round_trip():
    qw = quantize(weights(), QuantSpec(4, False, PER_GROUP, 64))
    parts = [qw.rows(0, 10), qw.rows(10, 40), qw.rows(40, 64)]
    joined = QuantizedWeight.concat_rows(parts)
    assert torch.equal(joined.dequantize(), qw.dequantize())
    other = quantize(weights(), QuantSpec(4, True, PER_GROUP, 64))
    with pytest.raises(LmforgeError, match="share"):
        QuantizedWeight.concat_rows([qw, other])


def test_errors():
    with pytest.raises(LmforgeError, match="bits"):
        QuantSpec(bits=9)
    with pytest.raises(LmforgeError, match="granularity"):
        QuantSpec(granularity="row")
    with pytest.raises(LmforgeError, match="2-D"):
        quantize(torch.zeros(4), QuantSpec())
    assert quantization_error(torch.ones(3), torch.ones(3)).sqnr_db == float("inf")
