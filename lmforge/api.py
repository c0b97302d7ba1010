"""The Python entry points: load a model with its tokenizer, make an engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.decoder import Decoder
from lmforge.engine import Engine
from lmforge.errors import LmforgeError
from lmforge.loading import Checkpoint, load_checkpoint
from lmforge.models.transformer import Transformer
from lmforge.precision import torch_dtype
from lmforge.tokenizer import Tokenizer


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return torch_dtype(dtype) if isinstance(dtype, str) else dtype


BACKENDS = ("torch", "onnxruntime")


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    model: Decoder  # a Transformer, or an OnnxDecoder (logits from ONNX Runtime)
    tokenizer: Tokenizer
    checkpoint: Checkpoint | None  # None for an ONNX export
    backend: str = "torch"
    precision: str | None = None  # an ONNX export's weight precision (fp32, int8, int4)

    def engine(self, **kwargs) -> Engine:
        return Engine(self.model, self.tokenizer, **kwargs)


def load(model: str | os.PathLike | None = None, dtype: str | torch.dtype | None = None,
         cache_dir: Path | None = None, backend: str | None = None) -> LoadedModel:
    """Load a model (GGUF file, Hugging Face directory, lmforge quantized directory, ONNX export
    folder or 'smollm2-135m').

    dtype: compute dtype; None means float32, or for a quantized model the dtype it was made for.
    backend: "torch" or "onnxruntime"; None picks onnxruntime for an ONNX export folder, else torch.
    With onnxruntime, a checkpoint is exported once into the cache (at its own precision)."""
    from lmforge.onnx.export import is_onnx_export, is_onnx_file

    if backend is not None and backend not in BACKENDS:
        raise LmforgeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if is_onnx_export(model) or is_onnx_file(model) or backend == "onnxruntime":
        if backend == "torch":
            raise LmforgeError(f"{model}: an ONNX export runs with the onnxruntime backend")
        return _load_onnx(model, dtype, cache_dir)
    checkpoint = load_checkpoint(model, cache_dir)
    if checkpoint.quantization is not None:
        from lmforge.quant.apply import compute_dtype, quantized_layer_factory

        quantization = checkpoint.quantization
        float_dtype = compute_dtype(quantization.recipe) if dtype is None else _as_dtype(dtype)
        factory = quantized_layer_factory(checkpoint.config, checkpoint.tensors, quantization, float_dtype,
                                          None if dtype is None else float_dtype)
        net = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors, float_dtype, factory,
                                          activation_dtype=float_dtype)  # the integer kernels' own
    else:
        float_dtype = torch.float32 if dtype is None else _as_dtype(dtype)
        net = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors, float_dtype)
    checkpoint.tensors = {}  # the model holds its own copies; let the file mapping go
    tokenizer = Tokenizer.from_dir(checkpoint.tokenizer_dir, checkpoint.config.eos_token_ids)
    return LoadedModel(checkpoint.source.name, checkpoint.config, net, tokenizer, checkpoint)


def _load_onnx(model, dtype, cache_dir: Path | None) -> LoadedModel:
    from lmforge.onnx.export import (
        MODEL_FILE,
        cached_export,
        exported_config,
        is_onnx_export,
        is_onnx_file,
        read_manifest,
    )
    from lmforge.onnx.runtime import OnnxDecoder
    from lmforge.paths import default_cache_dir

    if dtype is not None and _as_dtype(dtype) != torch.float32:
        raise LmforgeError("the onnxruntime backend computes in float32 (INT4/INT8 weights through MatMulNBits); "
                           "leave --dtype unset")
    if is_onnx_file(model):  # a bare decoder file: its config and tokenizer must sit beside it
        model_file, folder, name = Path(model), Path(model).parent, Path(model).parent.resolve().name
        precision = None
    else:
        folder = Path(model) if is_onnx_export(model) else cached_export(model, cache_dir or default_cache_dir())
        manifest = read_manifest(folder)
        model_file, name, precision = folder / MODEL_FILE, manifest.get("name", folder.name), manifest.get("precision")
    if not (folder / "config.json").is_file():
        raise LmforgeError(f"{model_file}: an ONNX decoder needs the model's config.json beside it")
    config = exported_config(folder)
    decoder = OnnxDecoder(model_file, config)
    tokenizer = Tokenizer.from_dir(folder, config.eos_token_ids)
    return LoadedModel(name, config, decoder, tokenizer, None, "onnxruntime", precision)


def load_tokenizer(model: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Tokenizer:
    """A model's tokenizer without building the model."""
    from lmforge.onnx.export import exported_config, is_onnx_export

    if is_onnx_export(model):
        return Tokenizer.from_dir(Path(model), exported_config(Path(model)).eos_token_ids)
    checkpoint = load_checkpoint(model, cache_dir)
    return Tokenizer.from_dir(checkpoint.tokenizer_dir, checkpoint.config.eos_token_ids)
