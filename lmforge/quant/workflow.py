"""Load -> calibrate -> quantize -> save: what `lmforge quantize` does, as one library call."""

from __future__ import annotations

from pathlib import Path

from lmforge.atomic import require_free_folder
from lmforge.errors import LmforgeError
from lmforge.quant.apply import QuantizationReport, quantize_model
from lmforge.quant.calibration import calibration_batch, read_calibration_text
from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.serialize import save_quantized


def weight_bytes(model) -> int:
    """Bytes of everything the model keeps resident for its weights (parameters and buffers)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def weights_file_bytes(folder: Path) -> int:
    """Bytes of a model folder's safetensors files."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def quantize_loaded(lm, recipe: QuantRecipe, calibration_file: str | Path | None = None,
                    show_progress: bool = True) -> QuantizationReport:
    """Quantize a float32 LoadedModel in place (calibrating on the file, or the shipped text)."""
    if lm.checkpoint.quantization is not None:
        raise LmforgeError(f"{lm.name} is already quantized; quantize the original model")
    calibration = None
    if recipe.needs_calibration:
        text = read_calibration_text(calibration_file)
        calibration = calibration_batch(lm.tokenizer, text, recipe.calibration_samples, recipe.calibration_tokens)
    elif calibration_file is not None:
        read_calibration_text(calibration_file)  # still report a missing file
    return quantize_model(lm.model, recipe, calibration, show_progress)


def quantize_to_folder(model: str | Path | None, recipe: QuantRecipe, out: str | Path,
                       calibration_file: str | Path | None = None, show_progress: bool = True):
    """Quantize a model and save it; returns (LoadedModel now quantized, report, folder)."""
    import lmforge

    out = require_free_folder(out)
    lm = lmforge.load(model, "float32")
    float_bytes = weight_bytes(lm.model)
    report = quantize_loaded(lm, recipe, calibration_file, show_progress)
    report.float32_weight_bytes = float_bytes
    source = {"name": lm.name, "source": str(lm.checkpoint.source.path)}
    folder = save_quantized(lm.model, lm.config, recipe, report.weights, lm.checkpoint.tokenizer_dir, out, source)
    return lm, report, folder
