"""Small C kernels for what PyTorch's CPU build does slowly, compiled on first use.

The sources ship with the package; the first process that needs a kernel compiles it with the
system's C compiler into the lmforge cache (atomically, so concurrent processes are safe) and
loads it with ctypes (which releases the GIL while a kernel runs). Without a compiler or an
AVX2 CPU the loaders return None and callers keep PyTorch's own kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).parent
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
_COMPILERS = ("cc", "gcc", "clang")
_unavailable: dict[str, str] = {}


def kernel_cache_dir() -> Path:
    from lmforge.loading import default_cache_dir

    return default_cache_dir() / "kernels"


def cpu_runs_avx2() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and \
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def build_library(source: Path, flags: tuple[str, ...], cache_dir: Path,
                  compiler: str | None = None) -> Path:
    """Compile `source` into a shared library in `cache_dir` (reused when source and flags match).

    Raises OSError when no compiler is found or the compilation fails."""
    compiler = compiler or next((c for c in _COMPILERS if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler) is None:
        raise OSError(f"no C compiler found (tried {compiler or ', '.join(_COMPILERS)})")
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join((compiler, *flags)).encode()).hexdigest()[:16]
    target = cache_dir / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, str(source), "-o", temporary, "-lm"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise OSError(f"{compiler} failed on {source.name}: {result.stderr.strip()[-500:]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


@functools.cache
def load_library(name: str) -> ctypes.CDLL | None:
    """The compiled `name`.c, or None where it cannot be built or run (see `unavailable_reason`)."""
    try:
        if not cpu_runs_avx2():
            raise OSError(f"the kernels need an x86-64 CPU with AVX2 (this one: {platform.machine()}, "
                          f"{torch.backends.cpu.get_cpu_capability()})")
        return ctypes.CDLL(str(build_library(SOURCE_DIR / f"{name}.c", FLAGS, kernel_cache_dir())))
    except (OSError, subprocess.TimeoutExpired) as error:
        _unavailable[name] = str(error)
        return None


def unavailable_reason(name: str = "half_linear") -> str | None:
    """Why `load_library(name)` returned None, if it did."""
    return _unavailable.get(name)


def _declare(function, argtypes) -> None:
    function.restype = None
    function.argtypes = argtypes


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return tensor.data_ptr() if tensor is not None else None


class HalfLinearKernels:
    """y = x W^T + b for float32 x and bfloat16/float16 W, from half_linear.c."""

    def __init__(self, library: ctypes.CDLL):
        self._functions = {torch.bfloat16: library.bf16_linear, torch.float16: library.fp16_linear}
        for function in self._functions.values():
            _declare(function, [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3)

    @staticmethod
    def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
        out_features, in_features = weight.shape
        return (x.dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16)
                and in_features % 8 == 0 and out_features % 4 == 0 and weight.is_contiguous()
                and x.device.type == "cpu" and not x.requires_grad)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight^T + bias after checking that the kernel can take them."""
        if not self.supports(x, weight):
            raise ValueError(f"half_linear needs float32 x and a contiguous 16-bit weight with "
                             f"in % 8 == 0 and out % 4 == 0; got {x.dtype} x, {weight.dtype} {tuple(weight.shape)}")
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {weight.shape[1]}")
        return self.linear_unchecked(x.contiguous(), weight, bias.float().contiguous() if bias is not None else None)

    def linear_unchecked(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The product for a caller that has checked `supports`, shapes, contiguity and a float32
        bias (a layer in the decoding loop, where each microsecond is paid ~120 times a token)."""
        out_features, in_features = weight.shape
        y = torch.empty(*x.shape[:-1], out_features)
        self._functions[weight.dtype](x.data_ptr(), weight.data_ptr(), _pointer(bias), y.data_ptr(),
                                      x.numel() // in_features, out_features, in_features)
        return y


@functools.cache
def half_linear_kernels() -> HalfLinearKernels | None:
    library = load_library("half_linear")
    return HalfLinearKernels(library) if library is not None else None
