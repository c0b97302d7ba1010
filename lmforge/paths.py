"""Where lmforge keeps what it makes once and reuses (converted models, exports, kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$LMFORGE_CACHE_DIR, else $XDG_CACHE_HOME/lmforge or ~/.cache/lmforge.

    Read at call time, so a caller (or a test) can point it elsewhere."""
    env = os.environ.get("LMFORGE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmforge"
