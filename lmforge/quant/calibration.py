"""Calibration token ids for the methods that look at activations (GPTQ, AWQ, SmoothQuant).

The default text ships with lmforge (Shakespeare, a Chinese classic, Markdown): none of it is in
the WikiText-2 text that evaluation scores.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from lmforge.errors import LmforgeError


def default_calibration_text() -> str:
    return resources.files("lmforge.data").joinpath("calibration.txt").read_text(encoding="utf-8")


def read_calibration_text(path: str | Path | None) -> str:
    if path is None:
        return default_calibration_text()
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"{path}: calibration file not found") from None
    except IsADirectoryError:
        raise LmforgeError(f"{path}: is a directory, expected a UTF-8 text file") from None
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: calibration file is not UTF-8 text") from None


def calibration_batch(tokenizer, text: str, samples: int, length: int) -> torch.Tensor:
    """`samples` windows of `length` tokens [samples, length], spread evenly over the text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < length:
        raise LmforgeError(f"the calibration text has {len(ids)} tokens; one sample needs {length}")
    starts = torch.linspace(0, len(ids) - length, samples).round().long().unique()
    data = torch.tensor(ids)
    return torch.stack([data[s:s + length] for s in starts.tolist()])
