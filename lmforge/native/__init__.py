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

from lmforge.paths import default_cache_dir

SOURCE_DIR = Path(__file__).parent
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
_COMPILERS = ("cc", "gcc", "clang")
_unavailable: dict[str, str] = {}


def kernel_cache_dir() -> Path:
    return default_cache_dir() / "kernels"


def cpu_runs_avx2() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and \
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def build_library(source: Path, flags: tuple[str, ...], cache_dir: Path,
                  compiler: str | None = None) -> Path:
    """Compile `source` into a shared library in `cache_dir` (reused while the source, the
    headers beside it and the flags are unchanged).

    Raises OSError when no compiler is found or the compilation fails."""
    compiler = compiler or next((c for c in _COMPILERS if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler) is None:
        raise OSError(f"no C compiler found (tried {compiler or ', '.join(_COMPILERS)})")
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
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


def unavailable_reason(name: str) -> str | None:
    """Why `load_library(name)` returned None, if it did."""
    return _unavailable.get(name)


@functools.cache
def _kernels(name: str, wrapper):
    """`wrapper` around the compiled `name`.c, or None where it is unavailable."""
    library = load_library(name)
    return wrapper(library) if library is not None else None


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


def half_linear_kernels() -> HalfLinearKernels | None:
    return _kernels("half_linear", HalfLinearKernels)


class OneQueryAttention:
    """Attention of one query per sequence over its keys/values in place (bf16, fp16 or fp32),
    from one_query_attention.c: no cast of the cache, no mask tensor."""

    MAX_HEAD_DIM = 256

    def __init__(self, library: ctypes.CDLL):
        self._functions = {torch.bfloat16: library.attend_one_query_bf16,
                           torch.float16: library.attend_one_query_fp16,
                           torch.float32: library.attend_one_query_fp32}
        for function in self._functions.values():
            _declare(function, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
                     + [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_float])

    def supports_heads(self, heads: int, kv_heads: int, head_dim: int, kv_dtype: torch.dtype) -> bool:
        """Whether float32 queries of `heads` heads can attend `kv_heads` heads stored in `kv_dtype`."""
        return (kv_dtype in self._functions and head_dim % 8 == 0 and head_dim <= self.MAX_HEAD_DIM
                and heads % kv_heads == 0)

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        heads, head_dim, kv_heads = q.shape[1], q.shape[2], k.shape[1]
        return (q.dtype == torch.float32 and v.dtype == k.dtype
                and self.supports_heads(heads, kv_heads, head_dim, k.dtype)
                and q.stride(-1) == 1 and q.stride(1) == head_dim and k.stride(-1) == 1 and v.stride(-1) == 1
                and k.shape == v.shape and k.shape[0] == q.shape[0] and k.shape[-1] == head_dim
                and q.device.type == "cpu" and not q.requires_grad)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first: torch.Tensor,
               last: torch.Tensor, scale: float) -> torch.Tensor:
        """q [B, H, D] float32, k/v [B, KV, L, D]; row b attends positions first[b]..last[b]
        (int64 [B], clamped to 0..L-1). Returns [B, H * D] float32."""
        if not self.supports(q, k, v) or first.dtype != torch.int64 or last.dtype != torch.int64:
            raise ValueError(f"one-query attention cannot take q {q.dtype} {tuple(q.shape)}, "
                             f"k/v {k.dtype} {tuple(k.shape)}, key ranges {first.dtype}/{last.dtype}")
        if first.shape != (q.shape[0],) or last.shape != (q.shape[0],):
            raise ValueError(f"key ranges must have one entry per sequence ({q.shape[0]})")
        return self.attend_unchecked(q, k, v, first.contiguous(), last.contiguous(), scale)

    def attend_unchecked(self, q, k, v, first, last, scale: float) -> torch.Tensor:
        """`attend` for a caller that has checked `supports` and the key ranges."""
        batch, heads, head_dim = q.shape
        kv_heads, length = k.shape[1], k.shape[2]
        out = torch.empty(batch, heads * head_dim)
        scratch = torch.empty(batch * heads * length)
        self._functions[k.dtype](q.data_ptr(), q.stride(0), k.data_ptr(), v.data_ptr(), *k.stride()[:3],
                                 *v.stride()[:3], first.data_ptr(), last.data_ptr(), out.data_ptr(),
                                 scratch.data_ptr(), batch, heads, kv_heads, length, head_dim, scale)
        return out


def one_query_attention() -> OneQueryAttention | None:
    return _kernels("one_query_attention", OneQueryAttention)


class RmsNormKernel:
    """RMSNorm of float32 rows with a float32 weight, from rms_norm.c."""

    def __init__(self, library: ctypes.CDLL):
        self._function = library.rms_norm_f32
        _declare(self._function, [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_float])

    @staticmethod
    def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.shape[-1] % 8 == 0
                and weight.shape == (x.shape[-1],) and weight.is_contiguous() and x.device.type == "cpu"
                and not x.requires_grad and not weight.requires_grad)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x / sqrt(mean(x^2, -1) + eps) * weight; the caller has checked `supports`."""
        x = x.contiguous()
        y = torch.empty_like(x)
        self._function(x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], eps)
        return y


def rms_norm_kernel() -> RmsNormKernel | None:
    return _kernels("rms_norm", RmsNormKernel)
