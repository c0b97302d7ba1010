import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.quant.linear import W8A8Linear
from lmforge.quant.rtn import QuantSpec, quantize
from lmforge.quant.smoothquant import smoothing_scales


def test_smoothing_moves_outliers_into_the_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=g)
    x[:, [3, 70]] *= 50  # outlier channels, as in LLM activations
    w = torch.randn(96, 128, generator=g) * 0.05
    s = smoothing_scales(x.abs().amax(0), w, alpha=0.5)
    assert torch.allclose((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-3)
    # After smoothing, the per-channel maxima of activations and weights meet halfway.
    assert torch.allclose((x / s).abs().amax(0), (w * s).abs().amax(0), rtol=1e-4)
    reference = x @ w.t()

    def w8a8_error(xs, ws):
        layer = W8A8Linear(quantize(ws, QuantSpec(8)), None, torch.float32, "tensor")
        return (layer(xs) - reference).pow(2).mean().item()

    assert w8a8_error(x / s, w * s) < w8a8_error(x, w) / 4


def test_alpha_bounds():
    with pytest.raises(LmforgeError, match="alpha"):
        smoothing_scales(torch.ones(4), torch.ones(2, 4), alpha=1.5)
    s0 = smoothing_scales(torch.full((4,), 8.0), torch.ones(2, 4), alpha=0.0)
    assert torch.allclose(s0, torch.ones(4))  # alpha 0: nothing migrates
