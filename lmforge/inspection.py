"""What a deployment engineer asks of a model before deploying it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmforge import catalogue, loading
from lmforge.config import ModelConfig
from lmforge.paths import default_cache_dir
from lmforge.plan import KV_BYTES, WEIGHT_BYTES, weight_bytes


@dataclass
class ModelReport:
    name: str
    source: str
    config: ModelConfig
    parameters_by_component: dict[str, int]
    parameters_in_weights: int | None
    file_bytes: int | None
    storage_types: dict[str, int] = field(default_factory=dict)  # GGUF quant types or safetensors dtypes
    quantization: str | None = None  # how a saved lmforge / compressed-tensors model is quantized

    @property
    def parameters(self) -> int:
        return sum(self.parameters_by_component.values())

    def memory_by_precision(self) -> dict[str, float]:
        return {p: weight_bytes(self.config, p) for p in WEIGHT_BYTES}

    def kv_bytes_per_token(self) -> dict[str, float]:
        return {p: self.config.kv_cache_bytes_per_token(b) for p, b in KV_BYTES.items()}

    def to_dict(self) -> dict:
        c = self.config
        return {
            "name": self.name, "source": self.source, "architecture": c.architecture,
            "config": c.to_hf_dict(),
            "parameters": self.parameters, "parameters_by_component": self.parameters_by_component,
            "parameters_in_weights": self.parameters_in_weights,
            "memory_bytes": self.memory_by_precision(),
            "kv_cache_bytes_per_token": self.kv_bytes_per_token(),
            "context_length": c.max_position_embeddings,
            "file_bytes": self.file_bytes, "storage_types": self.storage_types,
            "quantization": self.quantization,
        }


def _safetensors_header_info(folder: Path) -> tuple[int, Counter]:
    """Parameter count and dtype histogram from safetensors headers (no tensor data read)."""
    total, dtypes = 0, Counter()
    for file in loading.safetensors_files(folder):  # a model folder without weights is an error
        header = loading.safetensors_header(file)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            total += n
            dtypes[info["dtype"]] += 1
    return total, dtypes


def inspect_model(spec) -> ModelReport:
    """Report on a catalogue name, config.json, model directory or GGUF file (weights not loaded)."""
    known = catalogue.lookup(str(spec)) if spec is not None and not Path(str(spec)).exists() else None
    if known is not None:
        config = known
        return ModelReport(str(spec).lower(), "built-in catalogue (public config)", config,
                           config.parameter_counts(), None, None)
    path = Path(str(spec)) if spec is not None else None
    if path is not None and path.is_file() and not loading.is_gguf_file(path):
        config = loading.config_file(path)
        return ModelReport(path.parent.resolve().name, str(path), config, config.parameter_counts(), None, None)
    source = loading.resolve(spec)
    if source.kind == "gguf":
        folder = loading.convert_gguf(source, default_cache_dir())
        details = json.loads((folder / "lmforge_source.json").read_text())
        config = ModelConfig.from_json_file(folder / "config.json")
        in_weights, _ = _safetensors_header_info(folder)
        return ModelReport(source.name, str(source.path), config, config.parameter_counts(), in_weights,
                           source.path.stat().st_size, dict(details.get("quantization_types", {})))
    config = ModelConfig.from_json_file(source.path / "config.json")
    in_weights, dtypes = _safetensors_header_info(source.path)
    size = sum(f.stat().st_size for f in loading.safetensors_files(source.path))
    quantization = _describe_quantization(source.path / "config.json")
    if quantization is not None:
        in_weights = 0  # packed words and scales are not parameters
    return ModelReport(source.name, str(source.path), config, config.parameter_counts(), in_weights or None,
                       size or None, dict(dtypes), quantization)


def _describe_quantization(config_file: Path) -> str | None:
    found = loading.read_quantization(config_file)
    if found is None:
        return None
    recipe, body, head = found.recipe, found.body, found.head
    text = (f"{recipe.method}: {body.bits}-bit {'symmetric' if body.symmetric else 'asymmetric'} weights per "
            f"{body.granularity}" + (f" of {body.group_size}" if body.granularity == "group" else ""))
    if recipe.activation_granularity:
        text += f", INT8 activations per {recipe.activation_granularity}"
    return text + (f", INT{head.bits} output layer" if head is not None else ", float output layer")
