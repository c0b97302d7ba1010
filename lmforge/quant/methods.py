"""The quantization methods behind one interface: how each turns a dense weight into integer
levels, what it records of the calibration inputs, and the scales it folds in first.

Adding a method: a QuantMethod here, its name in `recipe.METHODS` (and its rules in QuantRecipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lmforge.models.layers import DenseLinear
from lmforge.quant import awq, gptq, smoothquant
from lmforge.quant.recipe import METHODS, QuantRecipe
from lmforge.quant.rtn import QuantizedWeight, quantize

AWQ_SAMPLE_ROWS = 2048  # calibration rows AWQ's grid search multiplies through, per layer


class InputRecorder:
    """Statistics of what one linear layer receives (forward pre-hook)."""

    def __init__(self, columns: int, hessian: bool, sample_rows: int):
        self.hessian = gptq.HessianAccumulator(columns) if hessian else None
        self.abs_sum = torch.zeros(columns)
        self.abs_max = torch.zeros(columns)
        self.rows = 0
        self.sample_rows = sample_rows
        self.samples: list[torch.Tensor] = []
        self.sampled = 0

    def __call__(self, module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if self.hessian is not None:
            self.hessian.add(x)
        self.abs_sum += x.abs().sum(0)
        self.abs_max = torch.maximum(self.abs_max, x.abs().amax(0))
        self.rows += x.shape[0]
        if self.sampled < self.sample_rows:
            take = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.rows))
                     [: self.sample_rows - self.sampled]]
            self.samples.append(take)
            self.sampled += take.shape[0]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


# --- scale folding (AWQ, SmoothQuant) -----------------------------------------------------------

def _scale_input_columns(layer: DenseLinear, scales: torch.Tensor) -> None:
    w = layer.dense_weight()
    layer.replace_weight(w * scales.to(w.dtype)[None, :])


def _fold_into_norm(norm, scales: torch.Tensor) -> None:
    norm.weight.data.div_(scales.to(norm.weight.dtype))


def _fold_into_up_rows(w13: DenseLinear, hidden: int, scales: torch.Tensor) -> None:
    """w2's input is silu(gate) * up: dividing up's rows divides that input channel-wise."""
    w = w13.dense_weight().clone()
    w[hidden:].div_(scales.to(w.dtype)[:, None])
    w13.replace_weight(w)


def _fold_awq(block, recorders: dict[str, InputRecorder], recipe: QuantRecipe) -> dict[str, str]:
    """AWQ: per-input-channel scales searched on the calibration samples, folded into what feeds
    each layer (the norms, and up_proj's rows for down_proj); returns a note per layer."""
    attention, ffn = block.attention, block.feed_forward
    notes = {}
    targets = [("attention.wqkv", attention.wqkv, lambda s: _fold_into_norm(block.attention_norm, s)),
               ("feed_forward.w13", ffn.w13, lambda s: _fold_into_norm(block.ffn_norm, s)),
               ("feed_forward.w2", ffn.w2, lambda s: _fold_into_up_rows(ffn.w13, ffn.hidden, s))]
    for name, layer, fold in targets:
        rec = recorders[name]
        found = awq.search_scales(layer.dense_weight(), rec.sample(), rec.abs_mean, recipe.weight_spec,
                                  recipe.awq_grid)
        fold(found.scales)
        _scale_input_columns(layer, found.scales)
        notes[name] = f"awq ratio {found.ratio:.2f}, output mse {found.first_loss:.3g} -> {found.loss:.3g}"
    return notes


def _fold_smoothquant(block, recorders: dict[str, InputRecorder], recipe: QuantRecipe) -> dict[str, str]:
    """SmoothQuant: activation outliers migrated into the weights, folded into the norms."""
    attention, ffn = block.attention, block.feed_forward
    notes = {}
    for name, layer, norm in (("attention.wqkv", attention.wqkv, block.attention_norm),
                              ("feed_forward.w13", ffn.w13, block.ffn_norm)):
        scales = smoothquant.smoothing_scales(recorders[name].abs_max, layer.dense_weight(), recipe.alpha)
        _fold_into_norm(norm, scales)
        _scale_input_columns(layer, scales)
        notes[name] = f"smoothed (alpha {recipe.alpha}), max|x| {recorders[name].abs_max.max():.1f}"
    return notes


def _round_to_nearest(weight: torch.Tensor, recorder: InputRecorder | None, recipe: QuantRecipe) -> QuantizedWeight:
    return quantize(weight, recipe.weight_spec)


def _gptq(weight: torch.Tensor, recorder: InputRecorder | None, recipe: QuantRecipe) -> QuantizedWeight:
    return gptq.gptq_quantize(weight, recorder.hessian.hessian(), recipe.weight_spec, recipe.damp, recipe.desc_act)


@dataclass(frozen=True)
class QuantMethod:
    quantize_weight: Callable[[torch.Tensor, InputRecorder | None, QuantRecipe], QuantizedWeight]
    """[out, in] float32 weight (and what its layer received) -> integer levels."""
    fold_scales: Callable[..., dict[str, str]] | None = None
    """(block, recorders, recipe) -> notes: scales folded into the block before quantizing it."""
    needs_hessian: bool = False
    sample_rows: int = 0
    """Calibration rows kept per layer (AWQ's search multiplies them through)."""
    layer_by_layer: bool = False
    """Record each layer's inputs only after the layers before it in the block are quantized."""
    keeps_outliers: bool = False
    """W8A8 at run time keeps input columns above the outlier threshold in float (LLM.int8())."""


QUANT_METHODS: dict[str, QuantMethod] = {
    "rtn": QuantMethod(_round_to_nearest),
    "llm-int8": QuantMethod(_round_to_nearest, keeps_outliers=True),
    "gptq": QuantMethod(_gptq, needs_hessian=True, layer_by_layer=True),
    "awq": QuantMethod(_round_to_nearest, _fold_awq, sample_rows=AWQ_SAMPLE_ROWS),
    "smoothquant": QuantMethod(_round_to_nearest, _fold_smoothquant),
}
assert set(QUANT_METHODS) == set(METHODS), "every method of recipe.METHODS needs a QuantMethod"


def quant_method(name: str) -> QuantMethod:
    return QUANT_METHODS[name]  # QuantRecipe already refused unknown names
