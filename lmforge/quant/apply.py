"""Quantize a Transformer in place: each method turns dense weights into `QuantizedWeight`s (after
folding AWQ / SmoothQuant scales into the operations before them), and a handler swaps the dense
layers for integer ones.

Calibrated methods go block by block (as GPTQ does): the calibration hidden states pass through
the blocks already quantized, the next block's layer inputs are recorded with forward pre-hooks,
the block is quantized, and its quantized output feeds the next one.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model import DenseLinear, RMSNorm, Transformer, dense_layer
from lmforge.progress import progress_iter
from lmforge.quant import awq, gptq, smoothquant
from lmforge.quant.linear import Int4Linear, Int8Linear, W8A8Linear
from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.rtn import QuantizedWeight, QuantSpec, quantization_error, quantize

AWQ_SAMPLE_ROWS = 2048  # calibration rows AWQ's grid search multiplies through, per layer


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    mse: float
    max_abs: float
    sqnr_db: float
    note: str = ""


@dataclass
class QuantizationReport:
    recipe: QuantRecipe
    layers: list[LayerReport] = field(default_factory=list)
    weights: dict[str, tuple[QuantizedWeight, torch.Tensor | None]] = field(default_factory=dict, repr=False)
    """Fused layer name -> (integer weight, bias): what saving writes."""
    float32_weight_bytes: int | None = None

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "layers": [vars(layer) for layer in self.layers]}


# --- the handler: QuantizedWeight -> layer ------------------------------------------------------

def make_layer(qw: QuantizedWeight, bias: torch.Tensor | None, recipe: QuantRecipe, head: bool = False,
               tied: bool = False, act_dtype: torch.dtype | None = None) -> nn.Module:
    """The integer layer for a weight (`head`: the output layer; `tied`: it is the embedding too).

    act_dtype: the activations' dtype; None is bfloat16 for weight-only layers (the fast kernels)
    and float32 for W8A8. float32 makes weight-only layers exact but slow."""
    weight_only = act_dtype or torch.bfloat16
    if head:
        if qw.spec.bits == 4:
            return Int4Linear(qw, bias, weight_only, keep_rows=tied)
        return Int8Linear(qw, bias, weight_only)
    if recipe.activation_granularity is not None:
        threshold = recipe.outlier_threshold if recipe.method == "llm-int8" else None
        return W8A8Linear(qw, bias, torch.float32, recipe.activation_granularity, threshold)
    return (Int8Linear if qw.spec.bits == 8 else Int4Linear)(qw, bias, weight_only)


def compute_dtype(recipe: QuantRecipe) -> torch.dtype:
    """The dtype of everything around the quantized layers (norms, residual stream)."""
    return torch.float32 if recipe.activation_granularity is not None else torch.bfloat16


# --- the model's linear layers ------------------------------------------------------------------

def block_linears(block) -> dict[str, tuple[nn.Module, str]]:
    return {"attention.wqkv": (block.attention, "wqkv"), "attention.wo": (block.attention, "wo"),
            "feed_forward.w13": (block.feed_forward, "w13"), "feed_forward.w2": (block.feed_forward, "w2")}


def _dense(layer: nn.Module, name: str) -> DenseLinear:
    if not isinstance(layer, DenseLinear):
        raise LmforgeError(f"{name} is already quantized; quantize the original model")
    return layer


class _InputRecorder:
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


def _fold_scales(block, recorders: dict[str, _InputRecorder], recipe: QuantRecipe) -> dict[str, str]:
    """Find and fold AWQ or SmoothQuant scales for this block; returns a note per layer."""
    attention, ffn = block.attention, block.feed_forward
    notes = {}
    if recipe.method == "awq":
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
    elif recipe.method == "smoothquant":
        for name, layer, norm in (("attention.wqkv", attention.wqkv, block.attention_norm),
                                  ("feed_forward.w13", ffn.w13, block.ffn_norm)):
            scales = smoothquant.smoothing_scales(recorders[name].abs_max, layer.dense_weight(), recipe.alpha)
            _fold_into_norm(norm, scales)
            _scale_input_columns(layer, scales)
            notes[name] = f"smoothed (alpha {recipe.alpha}), max|x| {recorders[name].abs_max.max():.1f}"
    return notes


# --- quantizing ---------------------------------------------------------------------------------

def _quantize_layer(layer: DenseLinear, recipe: QuantRecipe, recorder: _InputRecorder | None) -> QuantizedWeight:
    weight = layer.dense_weight().float()
    if recipe.method == "gptq":
        return gptq.gptq_quantize(weight, recorder.hessian.hessian(), recipe.weight_spec, recipe.damp,
                                  recipe.desc_act)
    return quantize(weight, recipe.weight_spec)


def _replace(parent: nn.Module, attr: str, name: str, qw: QuantizedWeight, layer: DenseLinear,
             recipe: QuantRecipe, report: QuantizationReport, note: str = "", head: bool = False,
             tied: bool = False) -> None:
    error = quantization_error(layer.dense_weight(), qw.dequantize())
    report.layers.append(LayerReport(name, qw.shape, error.mse, error.max_abs, error.sqnr_db, note))
    bias = layer.bias.detach().clone() if layer.bias is not None else None
    report.weights[name] = (qw, bias)
    setattr(parent, attr, make_layer(qw, bias, recipe, head, tied))


def _quantize_layers(index: int, block, names: list[str], recipe: QuantRecipe, report: QuantizationReport,
                     recorders: dict[str, _InputRecorder] | None, notes: dict[str, str]) -> None:
    linears = block_linears(block)
    for name in names:
        parent, attr = linears[name]
        full_name = f"layers.{index}.{name}"
        layer = _dense(getattr(parent, attr), full_name)
        recorder = recorders.get(name) if recorders is not None else None
        qw = _quantize_layer(layer, recipe, recorder)
        _replace(parent, attr, full_name, qw, layer, recipe, report, notes.get(name, ""))


def _record_block_inputs(block, names: list[str], xs: list[torch.Tensor], cos, sin, mask, is_causal,
                         recipe: QuantRecipe) -> dict[str, _InputRecorder]:
    """Run the calibration states through the block, recording what the layers `names` receive."""
    recorders = {}
    linears = block_linears(block)
    with ExitStack() as stack:
        for name in names:
            parent, attr = linears[name]
            layer = getattr(parent, attr)
            rec = _InputRecorder(layer.in_features, recipe.method == "gptq",
                                 AWQ_SAMPLE_ROWS if recipe.method == "awq" else 0)
            recorders[name] = rec
            stack.callback(layer.register_forward_pre_hook(rec).remove)
        for x in xs:
            block(x, cos, sin, mask, is_causal, None)
    return recorders


def _quantize_calibrated_block(index, block, xs, cos, sin, mask, is_causal, recipe, report) -> None:
    names = list(block_linears(block))
    if recipe.method == "gptq":
        # True-sequential: each layer's Hessian comes from inputs that already passed through the
        # quantized layers before it in the block.
        for name in names:
            recorders = _record_block_inputs(block, [name], xs, cos, sin, mask, is_causal, recipe)
            _quantize_layers(index, block, [name], recipe, report, recorders, {})
        return
    recorders = _record_block_inputs(block, names, xs, cos, sin, mask, is_causal, recipe)
    notes = _fold_scales(block, recorders, recipe)
    _quantize_layers(index, block, names, recipe, report, recorders, notes)


@torch.inference_mode()
def quantize_model(model: Transformer, recipe: QuantRecipe, calibration: torch.Tensor | None = None,
                   show_progress: bool = True) -> QuantizationReport:
    """Quantize `model` in place. `calibration`: token ids [samples, length] for calibrated methods."""
    report = QuantizationReport(recipe)
    if model.dtype != torch.float32:
        raise LmforgeError("quantize a float32 model (load it with dtype float32)")
    blocks = list(enumerate(model.layers))
    if recipe.needs_calibration:
        if calibration is None or calibration.dim() != 2 or calibration.shape[1] < 2:
            raise LmforgeError(f"{recipe.method} needs calibration token ids [samples, length]")
        positions = torch.arange(calibration.shape[1])[None]
        cos, sin = model.rope(positions, torch.float32)
        mask, is_causal = model.attention_mask(positions, None)
        xs = [model.embed_tokens(chunk) for chunk in calibration.split(4)]
        for index, block in progress_iter(blocks, f"{recipe.method}: quantizing blocks") if show_progress else blocks:
            _quantize_calibrated_block(index, block, xs, cos, sin, mask, is_causal, recipe, report)
            xs = [block(x, cos, sin, mask, is_causal, None) for x in xs]
    else:
        for index, block in progress_iter(blocks, f"{recipe.method}: quantizing blocks") if show_progress else blocks:
            _quantize_layers(index, block, list(block_linears(block)), recipe, report, None, {})
    if recipe.head_spec is not None:
        head = _dense(model.output, "output")
        _replace(model, "output", "output", quantize(head.dense_weight(), recipe.head_spec), head, recipe, report,
                 head=True, tied=model.embed is None)
    _convert_float_parts(model, compute_dtype(recipe))
    return report


def _convert_float_parts(model: Transformer, dtype: torch.dtype) -> None:
    """Norms, embeddings and any float layer to the dtype the quantized layers work beside."""
    for name, module in list(model.named_modules()):
        if isinstance(module, DenseLinear):  # rebuilt: each dtype has its own fast layout
            parent, _, attr = name.rpartition(".")
            bias = module.bias.to(dtype) if module.bias is not None else None
            rebuilt = DenseLinear.from_weight(module.dense_weight().to(dtype).contiguous(), bias)
            if module.layout == "packed":
                rebuilt.pack_()
            setattr(model.get_submodule(parent), attr, rebuilt)
        elif isinstance(module, (RMSNorm, nn.Embedding)):
            module.to(dtype)
    model.weight_dtype = dtype


def quantized_layer_factory(tensors, recipe: QuantRecipe, body_spec: QuantSpec, head_spec: QuantSpec | None,
                            dtype: torch.dtype, act_dtype: torch.dtype | None = None):
    """For Transformer.from_hf_tensors: the layer for HF weights `names` of a saved quantized model
    (float parts in `dtype`; `act_dtype` for the integer layers' activations, see make_layer)."""
    from lmforge.quant.serialize import read_fused

    def make(names: list[str], bias: bool) -> nn.Module:
        if not all(f"{n}.weight_shape" in tensors for n in names):  # left in float
            return dense_layer(tensors, names, bias, dtype)
        head = names == ["lm_head"]
        qw, biases = read_fused(tensors, names, head_spec if head else body_spec, bias)
        tied = head and "model.embed_tokens.weight" not in tensors  # the head holds the embedding
        return make_layer(qw, biases, recipe, head, tied, act_dtype)

    return make
