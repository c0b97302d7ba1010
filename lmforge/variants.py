"""A model at a named precision (see `precision`), on a backend, ready to measure.

float precisions load as dtypes; quantized ones are quantized, saved and loaded again, so they
run exactly as a quantized folder does; on ONNX Runtime a model is exported once into the cache.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lmforge.api import LoadedModel, load
from lmforge.errors import LmforgeError
from lmforge.loading import load_checkpoint
from lmforge.onnx.export import cached_export, export_bytes, is_onnx_export
from lmforge.paths import default_cache_dir
from lmforge.precision import ONNX_PRECISIONS, TORCH_PRECISIONS, Precision, precision
from lmforge.quant.serialize import save_quantized
from lmforge.quant.workflow import quantize_loaded, weight_bytes, weights_file_bytes


def load_variant(model, backend: str, name: str) -> tuple[LoadedModel, int]:
    """(LoadedModel, resident weight bytes) of `model` at precision `name` on `backend`.

    An ONNX export folder runs as it is; an already quantized model too."""
    if is_onnx_export(model):
        return load(model), export_bytes(Path(model))
    if backend == "onnxruntime":
        if name == "bf16":
            raise LmforgeError("the onnxruntime backend runs fp32, int8 or int4; bf16 runs on --backend torch")
        folder = cached_export(model, default_cache_dir(), precision(name, ONNX_PRECISIONS).name)
        return load(folder), export_bytes(folder)
    chosen = precision(name, TORCH_PRECISIONS)
    if chosen.quantized and load_checkpoint(model).quantization is not None:
        lm = load(model)  # already quantized: run it as it is
        return lm, weight_bytes(lm.model)
    if chosen.quantized:
        with tempfile.TemporaryDirectory(prefix="lmforge-variant-") as scratch:
            lm, _, _ = build_quantized(model, chosen, None, Path(scratch))
        return lm, weight_bytes(lm.model)
    lm = load(model, chosen.dtype)
    return lm, weight_bytes(lm.model)


def build_quantized(model, chosen: Precision, calibration_file, work_dir: Path,
                    reload: bool = True) -> tuple[LoadedModel, int, float]:
    """Quantize `model` by the precision's recipe into work_dir/NAME: (model, file bytes, seconds
    spent quantizing). reload: run the saved folder (as a user would) instead of the model in memory."""
    lm = load(model, "float32")
    start = time.perf_counter()
    report = quantize_loaded(lm, chosen.recipe, calibration_file, show_progress=False)
    seconds = time.perf_counter() - start
    folder = save_quantized(lm.model, lm.config, chosen.recipe, report.weights, lm.checkpoint.tokenizer_dir,
                            work_dir / chosen.name, {"name": lm.name})
    return (load(folder) if reload else lm), weights_file_bytes(folder), seconds
