"""AWQ (Lin et al., 2023): protect the weight channels that see large activations by scaling them up
before quantization and the activations down by the same factor, folded into the operation
that produces the input (an RMSNorm weight, or the rows of the layer before).

The per-channel scale is s = mean|x|^r, normalised, with r chosen from a grid over [0, 1) to
minimise the error of the layer's output on calibration inputs. r = 0 (the grid's first point)
is plain round-to-nearest, so the search never ends worse than it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.quant.rtn import QuantSpec, quantize


@dataclass
class ScaleSearch:
    scales: torch.Tensor  # [in_features]
    ratio: float
    loss: float
    first_loss: float  # the grid's first point: no scaling


def output_error(weight: torch.Tensor, x: torch.Tensor, scales: torch.Tensor, spec: QuantSpec) -> float:
    """Mean squared error of x W^T against (x / s) Q(W s)^T."""
    reference = x @ weight.t()
    approx = (x / scales) @ quantize(weight * scales, spec).dequantize().t()
    return (reference - approx).pow(2).mean().item()


def search_scales(weight: torch.Tensor, x: torch.Tensor, activation_mean_abs: torch.Tensor, spec: QuantSpec,
                  grid: int = 20) -> ScaleSearch:
    """Best scales for `weight` [out, in] given sample inputs x [n, in] and mean |x| per channel."""
    weight, x = weight.float(), x.float()
    best: ScaleSearch | None = None
    first_loss = None
    for step in range(grid):
        ratio = step / grid
        scales = activation_mean_abs.float().clamp_min(1e-4).pow(ratio)
        scales = scales / (scales.max() * scales.min()).sqrt()
        loss = output_error(weight, x, scales, spec)
        if first_loss is None:
            first_loss = loss
        if best is None or loss < best.loss:
            best = ScaleSearch(scales, ratio, loss, first_loss)
    best.first_loss = first_loss
    return best
