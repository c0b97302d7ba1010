"""Built-in public configs of well-known models, so planning works offline and without weights."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from lmforge.config import ModelConfig


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    text = resources.files("lmforge.data").joinpath("catalogue.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def names() -> list[str]:
    return sorted(_entries())


def lookup(name: str) -> ModelConfig | None:
    """The catalogue's config for `name` (case-insensitive), or None."""
    entry = _entries().get(name.strip().lower())
    return ModelConfig.from_hf_dict(entry, source=f"catalogue:{name}") if entry else None
