"""Quantized models on disk: safetensors + config.json in the compressed-tensors convention.

- INT4 weights: `pack-quantized` -- `weight_packed` (int32, eight signed levels + 8 per word along
  the input dimension, lowest bits first), `weight_scale` [out, groups], `weight_shape`, and for
  asymmetric weights `weight_zero_point` (signed, packed along the output dimension).
- INT8 weights: `int-quantized` -- `weight` (int8 levels), `weight_scale`, `weight_zero_point`.
- GPTQ act-order: `weight_g_idx`, the group of each input column.
- W8A8 (SmoothQuant, LLM.int8()): `input_activations` dynamic per token (or tensor); the smoothing
  scales are already folded into the saved norm weights.
lmforge's own settings (method, outlier threshold, ...) ride along under `quantization_config.lmforge`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.atomic import new_folder
from lmforge.config import ModelConfig
from lmforge.errors import ModelError
from lmforge.models.weights import EMBEDDING, FINAL_NORM, LM_HEAD, OUTPUT, FusedLinear, WeightMap
from lmforge.quant.recipe import PER_CHANNEL, PER_GROUP, PER_TENSOR, Quantization, QuantRecipe, QuantSpec
from lmforge.quant.rtn import QuantizedWeight
from lmforge.tokenizer import copy_tokenizer_files

FORMAT_VERSION = 1


# --- packing ----------------------------------------------------------------------------------

def pack_int32(levels: torch.Tensor, bits: int, dim: int = 1) -> torch.Tensor:
    """Signed `bits`-bit levels -> int32 words, 32 // bits per word along `dim`, lowest bits first."""
    values = levels.to(torch.int32) + (1 << (bits - 1))
    if dim == 0:
        return pack_int32(levels.t(), bits, 1).t().contiguous()
    per_word = 32 // bits
    rows, cols = values.shape
    padded = -(-cols // per_word) * per_word
    values = torch.nn.functional.pad(values, (0, padded - cols))
    shifts = torch.arange(per_word, dtype=torch.int32) * bits
    words = (values.to(torch.int64).reshape(rows, -1, per_word) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits, signed


def unpack_int32(words: torch.Tensor, bits: int, length: int, dim: int = 1) -> torch.Tensor:
    """Inverse of pack_int32: signed levels as int8, `length` of them along `dim`."""
    if dim == 0:
        return unpack_int32(words.t(), bits, length, 1).t().contiguous()
    per_word = 32 // bits
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    values = (words.to(torch.int64)[..., None] >> shifts) & ((1 << bits) - 1)
    values = values.reshape(words.shape[0], -1)[:, :length]
    return (values - (1 << (bits - 1))).to(torch.int8)


def _signed_levels(qw: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """compressed-tensors keeps asymmetric levels and zero points shifted into the signed range."""
    if qw.zero is None:
        return qw.q.to(torch.int16), None
    offset = 1 << (qw.spec.bits - 1)
    return qw.q.to(torch.int16) - offset, qw.zero - offset


def quantized_tensors(name: str, qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    levels, zero = _signed_levels(qw)
    out = {f"{name}.weight_scale": qw.scale.float().contiguous(),
           f"{name}.weight_shape": torch.tensor(qw.shape, dtype=torch.int64)}
    if qw.spec.bits == 8:
        out[f"{name}.weight"] = levels.to(torch.int8).contiguous()
        if zero is not None:
            out[f"{name}.weight_zero_point"] = zero.to(torch.int8).contiguous()
    else:
        out[f"{name}.weight_packed"] = pack_int32(levels, qw.spec.bits, dim=1)
        if zero is not None:
            out[f"{name}.weight_zero_point"] = pack_int32(zero.round().to(torch.int16), qw.spec.bits, dim=0)
    if qw.g_idx is not None:
        out[f"{name}.weight_g_idx"] = qw.g_idx.to(torch.int32)
    return out


def read_quantized(tensors, name: str, spec: QuantSpec) -> QuantizedWeight:
    try:
        rows, cols = (int(v) for v in tensors[f"{name}.weight_shape"].tolist())
        scale = tensors[f"{name}.weight_scale"].float()
        if f"{name}.weight_packed" in tensors:
            levels = unpack_int32(tensors[f"{name}.weight_packed"], spec.bits, cols)
        else:
            levels = tensors[f"{name}.weight"].to(torch.int8)
        zero = None
        if f"{name}.weight_zero_point" in tensors:
            z = tensors[f"{name}.weight_zero_point"]
            z = unpack_int32(z, spec.bits, rows, dim=0) if spec.bits < 8 else z
            zero = z.float() + (1 << (spec.bits - 1))
        g_idx = tensors[f"{name}.weight_g_idx"].long() if f"{name}.weight_g_idx" in tensors else None
    except KeyError as e:
        raise ModelError(f"quantized weight {name} is missing {e.args[0]}") from None
    if tuple(levels.shape) != (rows, cols) or scale.shape[0] != rows:
        raise ModelError(f"quantized weight {name}: shapes disagree ({tuple(levels.shape)} vs {rows}x{cols})")
    if scale.dim() == 1:
        scale = scale[:, None]
    if zero is not None and zero.dim() == 1:
        zero = zero[:, None]
    q = levels.to(torch.int16)
    if zero is not None:
        q = q + (1 << (spec.bits - 1))
    return QuantizedWeight(q.to(spec.storage_dtype()), scale, zero, spec, g_idx)


def read_fused(tensors, fused: FusedLinear, spec: QuantSpec) -> tuple[QuantizedWeight, torch.Tensor | None]:
    """The weights of `fused` (q|k|v, gate|up) stacked by rows as one QuantizedWeight, with their biases."""
    qw = QuantizedWeight.concat_rows([read_quantized(tensors, n, spec) for n in fused.parts])
    return qw, (torch.cat([tensors[n + ".bias"] for n in fused.parts]) if fused.bias else None)


# --- config -----------------------------------------------------------------------------------

def _weights_args(spec: QuantSpec, actorder: bool) -> dict:
    strategy = {PER_TENSOR: "tensor", PER_CHANNEL: "channel", PER_GROUP: "group"}[spec.granularity]
    return {"num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric, "strategy": strategy,
            "group_size": spec.group_size if spec.granularity == PER_GROUP else None, "dynamic": False,
            "actorder": "group" if actorder else None, "observer": "minmax"}


def quantization_config(recipe: QuantRecipe, head_spec: QuantSpec | None) -> dict:
    spec = recipe.weight_spec
    body_format = "pack-quantized" if spec.bits < 8 else "int-quantized"
    activations = None
    if recipe.activation_granularity is not None:
        activations = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True,
                       "strategy": recipe.activation_granularity, "observer": None}
    groups = {"group_0": {"targets": ["Linear"], "weights": _weights_args(spec, recipe.desc_act),
                          "input_activations": activations, "output_activations": None, "format": body_format}}
    if head_spec is not None:
        groups["group_1"] = {"targets": ["lm_head"], "weights": _weights_args(head_spec, False),
                             "input_activations": None, "output_activations": None, "format": "int-quantized"}
    formats = {g["format"] for g in groups.values()}
    return {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": groups,
            "ignore": [] if head_spec is not None else ["lm_head"], "kv_cache_scheme": None,
            "lmforge": {"version": FORMAT_VERSION, "recipe": recipe.to_dict()}}


def _spec_from_args(args: dict) -> QuantSpec:
    strategy = args.get("strategy", "channel")
    granularity = {"tensor": PER_TENSOR, "channel": PER_CHANNEL, "group": PER_GROUP}.get(strategy)
    if granularity is None or args.get("type", "int") != "int":
        raise ModelError(f"compressed-tensors weights of strategy {strategy!r} / type {args.get('type')!r} "
                         f"are not supported (int tensor/channel/group are)")
    return QuantSpec(int(args["num_bits"]), bool(args.get("symmetric", True)), granularity,
                     int(args.get("group_size") or 128))


def read_quantization_config(qc: dict, where: Path) -> Quantization:
    """How a compressed-tensors config says the weights are quantized."""
    if qc.get("quant_method") != "compressed-tensors":
        raise ModelError(f"{where}: quantization method {qc.get('quant_method')!r} is not supported; lmforge "
                         f"reads compressed-tensors checkpoints")
    groups = list(qc.get("config_groups", {}).values())
    body = next((g for g in groups if "Linear" in g.get("targets", [])), None)
    if body is None:
        raise ModelError(f"{where}: no compressed-tensors config group targets Linear layers")
    head = next((g for g in groups if g is not body and "lm_head" in g.get("targets", [])), None)
    body_spec = _spec_from_args(body["weights"])
    head_spec = _spec_from_args(head["weights"]) if head else None
    own = qc.get("lmforge", {}).get("recipe")
    if own:
        recipe = QuantRecipe.from_dict(own)
    else:  # written by another tool: run it as what the config describes
        acts = body.get("input_activations")
        recipe = QuantRecipe("rtn", body_spec.bits, body_spec.granularity, body_spec.group_size,
                             body_spec.symmetric, 8 if head_spec else None,
                             activations=(acts or {}).get("strategy") if acts else None)
    return Quantization(recipe, body_spec, head_spec)


# --- save -------------------------------------------------------------------------------------

def save_quantized(model, config: ModelConfig, recipe: QuantRecipe, weights: dict, tokenizer_dir: Path,
                   out: Path, source: dict | None = None) -> Path:
    """Write the model to `out` atomically (a temporary folder renamed into place).

    weights: fused layer name -> (QuantizedWeight, bias) as quantize_model recorded them."""
    from safetensors.torch import save_file

    out = Path(out)
    names = WeightMap(config)
    tensors: dict[str, torch.Tensor] = {}
    head_spec = None
    for module, (qw, bias) in weights.items():
        if module == OUTPUT:
            head_spec = qw.spec
        for name, start, end in names.linear(module).slices():
            tensors.update(quantized_tensors(name, qw.rows(start, end)))
            if bias is not None:
                tensors[f"{name}.bias"] = bias[start:end].contiguous()
    state = model.state_dict()
    for i in range(config.num_layers):
        for attr, name in names.block_norms(i).items():
            tensors[name] = state[f"layers.{i}.{attr}.weight"]
    tensors[FINAL_NORM] = state["norm.weight"]
    if model.embed is not None:
        tensors[EMBEDDING + ".weight"] = model.embed.weight
    elif OUTPUT not in weights:  # a float tied head is the embedding table
        tensors[EMBEDDING + ".weight"] = model.output.dense_weight()
    if OUTPUT not in weights and not config.tie_word_embeddings:
        tensors[LM_HEAD + ".weight"] = model.output.dense_weight()
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}

    hf_config = config.to_hf_dict()
    hf_config["quantization_config"] = quantization_config(recipe, head_spec)
    hf_config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    with new_folder(out) as work:
        save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
        (work / "config.json").write_text(json.dumps(hf_config, indent=2))
        (work / "lmforge_source.json").write_text(json.dumps({**(source or {}), "quantized_with": recipe.to_dict()},
                                                             indent=2))
        copy_tokenizer_files(Path(tokenizer_dir), work)
    return out
