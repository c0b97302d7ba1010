"""SmoothQuant (Xiao et al., 2022): move activation outliers into the weights before W8A8.

s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) per input channel j; X is divided by s (folded into
the RMSNorm before the layer) and W's columns are multiplied by it, so X W^T is unchanged while
both become easier to quantize to 8 bits.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError


def smoothing_scales(activation_max_abs: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    if not 0 <= alpha <= 1:
        raise LmforgeError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    weight_max = weight.float().abs().amax(dim=0).clamp_min(1e-5)
    act_max = activation_max_abs.float().clamp_min(1e-5)
    return (act_max.pow(alpha) / weight_max.pow(1 - alpha)).clamp_min(1e-5)
