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

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.models.layers import DenseLinear, RMSNorm, dense_layer
from lmforge.models.transformer import Transformer
from lmforge.models.weights import BLOCK_LINEARS, OUTPUT, FusedLinear, WeightMap, is_quantized
from lmforge.progress import progress_iter
from lmforge.quant.linear import Int4Linear, Int8Linear, W8A8Linear
from lmforge.quant.methods import InputRecorder, quant_method
from lmforge.quant.recipe import Quantization, QuantRecipe
from lmforge.quant.rtn import QuantizedWeight, quantization_error, quantize
from lmforge.quant.serialize import read_fused


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
        threshold = recipe.outlier_threshold if quant_method(recipe.method).keeps_outliers else None
        return W8A8Linear(qw, bias, torch.float32, recipe.activation_granularity, threshold)
    return (Int8Linear if qw.spec.bits == 8 else Int4Linear)(qw, bias, weight_only)


def compute_dtype(recipe: QuantRecipe) -> torch.dtype:
    """The dtype of everything around the quantized layers (norms, residual stream)."""
    return torch.float32 if recipe.activation_granularity is not None else torch.bfloat16


# --- the model's linear layers ------------------------------------------------------------------

def block_linears(block) -> dict[str, tuple[nn.Module, str]]:
    """Attribute path (as the weight map names it) -> (parent module, attribute) of a block's linears."""
    linears = {}
    for path in BLOCK_LINEARS:
        parent, attr = path.split(".")
        linears[path] = (getattr(block, parent), attr)
    return linears


def _dense(layer: nn.Module, name: str) -> DenseLinear:
    if not isinstance(layer, DenseLinear):
        raise LmforgeError(f"{name} is already quantized; quantize the original model")
    return layer


# --- quantizing ---------------------------------------------------------------------------------

def _quantize_layer(layer: DenseLinear, recipe: QuantRecipe, recorder: InputRecorder | None) -> QuantizedWeight:
    return quant_method(recipe.method).quantize_weight(layer.dense_weight().float(), recorder, recipe)


def _replace(parent: nn.Module, attr: str, name: str, qw: QuantizedWeight, layer: DenseLinear,
             recipe: QuantRecipe, report: QuantizationReport, note: str = "", head: bool = False,
             tied: bool = False) -> None:
    error = quantization_error(layer.dense_weight(), qw.dequantize())
    report.layers.append(LayerReport(name, qw.shape, error.mse, error.max_abs, error.sqnr_db, note))
    bias = layer.bias.detach().clone() if layer.bias is not None else None
    report.weights[name] = (qw, bias)
    setattr(parent, attr, make_layer(qw, bias, recipe, head, tied))


def _quantize_layers(index: int, block, names: list[str], recipe: QuantRecipe, report: QuantizationReport,
                     recorders: dict[str, InputRecorder] | None, notes: dict[str, str]) -> None:
    linears = block_linears(block)
    for name in names:
        parent, attr = linears[name]
        full_name = f"layers.{index}.{name}"
        layer = _dense(getattr(parent, attr), full_name)
        recorder = recorders.get(name) if recorders is not None else None
        qw = _quantize_layer(layer, recipe, recorder)
        _replace(parent, attr, full_name, qw, layer, recipe, report, notes.get(name, ""))


def _record_block_inputs(block, names: list[str], xs: list[torch.Tensor], cos, sin, mask, is_causal,
                         recipe: QuantRecipe) -> dict[str, InputRecorder]:
    """Run the calibration states through the block, recording what the layers `names` receive."""
    recorders = {}
    linears = block_linears(block)
    with ExitStack() as stack:
        for name in names:
            parent, attr = linears[name]
            layer = getattr(parent, attr)
            method = quant_method(recipe.method)
            rec = InputRecorder(layer.in_features, method.needs_hessian, method.sample_rows)
            recorders[name] = rec
            stack.callback(layer.register_forward_pre_hook(rec).remove)
        for x in xs:
            block(x, cos, sin, mask, is_causal, None)
    return recorders


def _quantize_calibrated_block(index, block, xs, cos, sin, mask, is_causal, recipe, report) -> None:
    names = list(block_linears(block))
    method = quant_method(recipe.method)
    if method.layer_by_layer:
        # True-sequential: each layer's Hessian comes from inputs that already passed through the
        # quantized layers before it in the block.
        for name in names:
            recorders = _record_block_inputs(block, [name], xs, cos, sin, mask, is_causal, recipe)
            _quantize_layers(index, block, [name], recipe, report, recorders, {})
        return
    recorders = _record_block_inputs(block, names, xs, cos, sin, mask, is_causal, recipe)
    notes = method.fold_scales(block, recorders, recipe) if method.fold_scales else {}
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


def quantized_layer_factory(config: ModelConfig, tensors, quantization: Quantization, dtype: torch.dtype,
                            act_dtype: torch.dtype | None = None):
    """For Transformer.from_hf_tensors: the layer for a FusedLinear of a saved quantized model
    (float parts in `dtype`; `act_dtype` for the integer layers' activations, see make_layer)."""
    tied = WeightMap(config).head_is_embedding(tensors)

    def make(fused: FusedLinear) -> nn.Module:
        if not all(is_quantized(tensors, n) for n in fused.parts):  # left in float
            return dense_layer(tensors, fused, dtype)
        head = fused.module == OUTPUT
        qw, biases = read_fused(tensors, fused, quantization.head if head else quantization.body)
        return make_layer(qw, biases, quantization.recipe, head, head and tied, act_dtype)

    return make
