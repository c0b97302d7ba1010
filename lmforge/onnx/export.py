"""`lmforge export onnx`: a checkpoint -> a folder that runs on its own with ONNX Runtime.

The folder holds model.onnx (+ model.onnx.data, the weights as external data), config.json,
the tokenizer, and lmforge_onnx.json (the manifest: precision, opset, where it came from).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from lmforge.atomic import new_folder, require_free_folder
from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError, ModelError
from lmforge.loading import Checkpoint, load_checkpoint
from lmforge.onnx.graph import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, build_decoder
from lmforge.onnx.weights import LayerSource
from lmforge.precision import INT4_GROUP, ONNX_PRECISIONS
from lmforge.progress import progress_iter, status
from lmforge.tokenizer import copy_tokenizer_files

MANIFEST = "lmforge_onnx.json"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
FORMAT_VERSION = 1


def is_onnx_export(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def is_onnx_file(path: str | os.PathLike | None) -> bool:
    """ONNX files are protobuf ModelProtos, which start with the ir_version field (tag 0x08)."""
    if path is None or not Path(path).is_file():
        return False
    with open(path, "rb") as f:
        return f.read(1) == b"\x08"


def checkpoint_precision(checkpoint: Checkpoint) -> str:
    if checkpoint.quantization is None:
        return "fp32"
    return f"int{checkpoint.quantization.body.bits}"


def resolve_precision(checkpoint: Checkpoint, precision: str | None) -> str:
    stored = checkpoint_precision(checkpoint)
    if precision is None:
        return stored
    if precision not in ONNX_PRECISIONS:
        raise LmforgeError(f"--precision must be one of {', '.join(ONNX_PRECISIONS)}, got {precision!r}")
    if stored != "fp32" and precision != stored:
        raise LmforgeError(f"this model is already quantized ({stored}); export it at --precision {stored} "
                           f"(its integer levels are kept) or export the original float model")
    return precision


def export_onnx(model: str | os.PathLike | None, out: str | os.PathLike, precision: str | None = None,
                opset: int = DEFAULT_OPSET, group_size: int = INT4_GROUP, accuracy_level: int = 4,
                cache_dir: Path | None = None, show_progress: bool = True) -> Path:
    """Export `model` (any lmforge MODEL) to the folder `out`, written atomically."""
    import onnx

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LmforgeError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} "
                           f"(the fused operators need ONNX Runtime's contrib domain beside it)")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise LmforgeError(f"--accuracy-level must be 0..4, got {accuracy_level}")
    out = require_free_folder(out)
    checkpoint = load_checkpoint(model, cache_dir)
    precision = resolve_precision(checkpoint, precision)
    if checkpoint.quantization is not None and checkpoint.quantization.recipe.activation_granularity is not None:
        # W8A8 checkpoints keep their INT8 weights; MatMulNBits quantizes activations per block instead.
        accuracy_level = 4
    source = LayerSource(checkpoint, precision, group_size=group_size)
    config = checkpoint.config
    progress = (lambda it: progress_iter(list(it), f"export: building {precision} graph")) if show_progress else None
    graph = build_decoder(config, source, opset, accuracy_level, progress)
    manifest = {
        "format": "lmforge-onnx", "version": FORMAT_VERSION, "name": checkpoint.source.name,
        "source": str(checkpoint.source.path), "precision": precision, "opset": opset,
        "accuracy_level": accuracy_level,
        "quantization": _quantization_summary(checkpoint, source),
        "graph": "GroupQueryAttention (rotary, in-place KV cache), SkipSimplifiedLayerNormalization, "
                 + ("MatMulNBits" if precision != "fp32" else "MatMul"),
        "inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key/value",
                   "logits_to_keep (optional, default 0 = all positions)"],
        "outputs": ["logits", "present.{i}.key/value"],
    }
    with new_folder(out) as work:
        with status(f"writing {out / MODEL_FILE}") if show_progress else contextlib.nullcontext():
            onnx.save_model(graph, str(work / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=DATA_FILE, size_threshold=1024)
        (work / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        copy_tokenizer_files(checkpoint.tokenizer_dir, work)
    return out


def _quantization_summary(checkpoint: Checkpoint, source: LayerSource) -> dict | None:
    if checkpoint.quantization is not None:
        recipe = checkpoint.quantization.recipe
        return {"from": "checkpoint (levels kept)", "recipe": recipe.to_dict()}
    if source.body_spec is None:
        return None
    spec, head = source.body_spec, source.head_spec
    return {"from": "rtn at export", "bits": spec.bits, "symmetric": spec.symmetric,
            "granularity": spec.granularity, "group_size": spec.group_size, "head_bits": head.bits}


# --- reading an export back ---------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder / MANIFEST}: unreadable ({e})") from None
    if manifest.get("format") != "lmforge-onnx":
        raise ModelError(f"{folder / MANIFEST}: not an lmforge ONNX manifest")
    if not (folder / MODEL_FILE).is_file():
        raise ModelError(f"{folder}: {MODEL_FILE} is missing")
    return manifest


def export_bytes(folder: Path) -> int:
    """Bytes of an export's graph and weights (model.onnx and its external data)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.name.startswith(MODEL_FILE))


def exported_config(folder: Path) -> ModelConfig:
    return ModelConfig.from_json_file(folder / "config.json")


def cached_export(model: str | os.PathLike | None, cache_dir: Path, precision: str | None = None) -> Path:
    """Export once into the cache (keyed by the source and precision) and reuse it afterwards."""
    checkpoint = load_checkpoint(model, cache_dir)
    precision = resolve_precision(checkpoint, precision)
    path = Path(checkpoint.source.path).resolve()
    stamp = f"{path}|{path.stat().st_mtime_ns}|{precision}|{FORMAT_VERSION}"
    folder = cache_dir / "onnx" / f"{checkpoint.source.name}-{precision}-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"
    if not is_onnx_export(folder):
        export_onnx(model, folder, precision, cache_dir=cache_dir)
    return folder
