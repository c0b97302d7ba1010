import torch

from lmforge.quant.awq import output_error, search_scales
from lmforge.quant.rtn import PER_GROUP, QuantSpec


def salient_inputs(rows=1024, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x[:, :4] *= 30  # a few channels carry large activations
    return x


def test_search_never_ends_worse_than_plain_rounding():
    spec = QuantSpec(4, True, PER_GROUP, 32)
    for seed in range(3):
        x = salient_inputs(seed=seed)
        w = torch.randn(64, 128, generator=torch.Generator().manual_seed(seed + 10)) * 0.05
        found = search_scales(w, x, x.abs().mean(0), spec, grid=20)
        assert found.loss <= found.first_loss
        assert found.first_loss == output_error(w, x, torch.ones(128), spec)  # grid point 0 is plain RTN
        assert abs(output_error(w, x, found.scales, spec) - found.loss) < 1e-9
    # With salient channels the search finds real gains.
    assert found.ratio > 0 and found.loss < 0.8 * found.first_loss


def test_scaling_is_exact_before_rounding():
    x, w = salient_inputs(), torch.randn(64, 128) * 0.05
    s = torch.rand(128) + 0.5
    assert torch.allclose(x @ w.t(), (x / s) @ (w * s).t(), atol=1e-4)
