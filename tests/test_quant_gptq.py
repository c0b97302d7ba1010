import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.quant.gptq import HessianAccumulator, gptq_quantize
from lmforge.quant.rtn import PER_CHANNEL, PER_GROUP, PER_TENSOR, QuantSpec, quantize


def correlated_inputs(rows=2048, cols=128, seed=0):
    """Inputs with correlated channels of very different sizes, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(rows, cols, generator=g) @ mix
    return x * torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=g)]


def output_error(x, w, approx):
    return (x @ w.t() - x @ approx.t()).pow(2).mean().item()


@pytest.mark.parametrize("spec", [QuantSpec(4, True, PER_GROUP, 32), QuantSpec(4, False, PER_GROUP, 64),
                                  QuantSpec(4, True, PER_CHANNEL), QuantSpec(8, True, PER_CHANNEL)], ids=str)
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_beats_rtn_on_layer_reconstruction(spec, desc_act):
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    acc = HessianAccumulator(128)
    for chunk in x.split(500):
        acc.add(chunk)
    assert acc.rows == 2048 and torch.allclose(acc.hessian(), 2 * x.t() @ x / 2048, rtol=1e-4, atol=1e-5)
    gptq = gptq_quantize(w, acc.hessian(), spec, desc_act=desc_act)
    rtn = quantize(w, spec)
    assert gptq.q.shape == w.shape and int(gptq.q.min()) >= spec.qmin and int(gptq.q.max()) <= spec.qmax
    assert output_error(x, w, gptq.dequantize()) < 0.8 * output_error(x, w, rtn.dequantize())
    if desc_act and spec.granularity == PER_GROUP:
        assert gptq.g_idx is not None and gptq.g_idx.shape == (128,)
        assert torch.bincount(gptq.g_idx).tolist() == [spec.group_size] * (128 // spec.group_size)
    else:
        assert gptq.g_idx is None


def test_dead_inputs_and_bad_settings():
    x = correlated_inputs(cols=64)
    x[:, 5] = 0  # a channel that never fires
    acc = HessianAccumulator(64)
    acc.add(x)
    w = torch.randn(16, 64) * 0.05
    q = gptq_quantize(w, acc.hessian(), QuantSpec(4, True, PER_GROUP, 32))
    assert (q.dequantize()[:, 5] == 0).all()
    with pytest.raises(LmforgeError, match="per tensor"):
        gptq_quantize(w, acc.hessian(), QuantSpec(8, True, PER_TENSOR))
    with pytest.raises(LmforgeError, match="damping"):
        gptq_quantize(w, acc.hessian(), QuantSpec(4), damp=0)
    with pytest.raises(LmforgeError, match="calibration"):
        HessianAccumulator(8).hessian()
