"""The Python entry points: load a model with its tokenizer, make an engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.engine import Engine
from lmforge.errors import LmforgeError
from lmforge.loading import Checkpoint, load_checkpoint
from lmforge.model import Transformer
from lmforge.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise LmforgeError(f"unknown dtype {name!r}; choose one of float32, bfloat16, float16") from None


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return parse_dtype(dtype) if isinstance(dtype, str) else dtype


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    model: Transformer
    tokenizer: Tokenizer
    checkpoint: Checkpoint

    def engine(self, **kwargs) -> Engine:
        return Engine(self.model, self.tokenizer, **kwargs)


def load(model: str | os.PathLike | None = None, dtype: str | torch.dtype | None = None,
         cache_dir: Path | None = None) -> LoadedModel:
    """Load a model (GGUF file, Hugging Face directory, lmforge quantized directory or 'smollm2-135m').

    dtype: compute dtype; None means float32, or for a quantized model the dtype it was made for."""
    checkpoint = load_checkpoint(model, cache_dir)
    if checkpoint.quantization is not None:
        from lmforge.quant.apply import compute_dtype, quantized_layer_factory

        recipe, body_spec, head_spec = checkpoint.quantization
        torch_dtype = compute_dtype(recipe) if dtype is None else _as_dtype(dtype)
        factory = quantized_layer_factory(checkpoint.tensors, recipe, body_spec, head_spec, torch_dtype)
        net = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors, torch_dtype, factory)
    else:
        torch_dtype = torch.float32 if dtype is None else _as_dtype(dtype)
        net = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors, torch_dtype)
    checkpoint.tensors = {}  # the model holds its own copies; let the file mapping go
    tokenizer = Tokenizer.from_dir(checkpoint.tokenizer_dir, checkpoint.config.eos_token_ids)
    return LoadedModel(checkpoint.source.name, checkpoint.config, net, tokenizer, checkpoint)
