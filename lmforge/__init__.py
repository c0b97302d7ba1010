"""lmforge: from a language-model checkpoint to a measured deployment on CPUs and small chips.

`import lmforge` is cheap (no torch): the entry points below load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (PEP 562 lazy attributes)
_LAZY = {"LoadedModel": "lmforge.api", "load": "lmforge.api", "load_tokenizer": "lmforge.api",
         "SamplingParams": "lmforge.sampling"}

__all__ = ["LoadedModel", "SamplingParams", "__version__", "load", "load_tokenizer"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
