"""Giving freed heap memory back to the operating system.

A server's activations change shape with every batch (prompt lengths, batch sizes), and glibc's
allocator keeps the freed pieces in its arenas: measured on the embedded model, resident memory
grew ~700 MB over 300 varied batches without `malloc_trim` and levelled off ~220 MB lower with it
(`benchmarks/bench_memory.py --batches 300` repeats it). `malloc_trim(0)` took ~0.05 ms there; the
engine loop calls it when it goes idle and about once a second while busy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; False where the C library has no malloc_trim."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class MemoryReturner:
    """Calls `release` after busy work: once when the loop goes idle, and every `every_s` while busy."""

    def __init__(self, every_s: float = 1.0, release: Callable[[], bool] = release_free_memory,
                 clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.release = release
        self.clock = clock
        self._last = clock()
        self._dirty = False
        self.releases = 0

    def after_step(self) -> None:
        self._dirty = True
        if self.clock() - self._last >= self.every_s:
            self._release()

    def when_idle(self) -> None:
        if self._dirty:
            self._release()

    def _release(self) -> None:
        self.release()
        self.releases += 1
        self._last = self.clock()
        self._dirty = False
