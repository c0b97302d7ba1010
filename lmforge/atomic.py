"""Write a folder all at once: build it beside its destination, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from lmforge.errors import ModelError


def require_free_folder(out: str | Path) -> Path:
    """`out` as a Path, if it is free to become a new folder (missing, or an empty folder).

    Callers with long work before writing check first, so they fail before the work."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: exists and is not an empty folder (it is a file, or not empty); choose a new one, "
                         "nothing was written")
    return out


@contextlib.contextmanager
def new_folder(out: str | Path) -> Iterator[Path]:
    """Yield a work folder that becomes `out` when the block succeeds; refuse a non-empty `out`."""
    out = require_free_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield work
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write a file all at once (a temporary file beside it, renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    import json

    return write_file(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
