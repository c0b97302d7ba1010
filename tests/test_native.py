"""The native kernels: built from source on first use, exact float32 sums of 16-bit weights."""

import shutil
import pytest
import torch

from lmforge import native

COMPILER = shutil.which("cc") or shutil.which("gcc")


def _built(name: str, kernel):
    """The kernel; a failure where it should build (a C compiler and AVX2), else a skip."""
    if kernel is None and COMPILER and native.cpu_runs_avx2():
        pytest.fail(f"{name} should build on this machine: {native.unavailable_reason(name)}")
    if kernel is None:
        pytest.skip(f"no native {name} here: {native.unavailable_reason(name)}")
    return kernel


@pytest.fixture(scope="module")
def kernels():
    return _built("half_linear", native.half_linear_kernels())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_half_linear_equals_a_float64_product_of_the_same_weights(kernels, dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(200, 96, generator=gen).to(dtype)
    bias = torch.randn(200, generator=gen).to(dtype)
    x = torch.randn(2, rows, 96, generator=gen)
    y = kernels.linear(x, weight, bias)
    expected = x.double() @ weight.double().t() + bias.double()
    assert y.shape == (2, rows, 200) and y.dtype == torch.float32
    assert (y.double() - expected).abs().max() < 1e-4
    assert (kernels.linear(x, weight) - (x.double() @ weight.double().t())).abs().max() < 1e-4


def test_half_linear_refuses_what_it_cannot_compute(kernels):
    weight = torch.randn(8, 12).bfloat16()  # 12 input features: not a multiple of 8
    x = torch.randn(1, 12)
    assert not kernels.supports(x, weight)
    with pytest.raises(ValueError, match="in % 8"):
        kernels.linear(x, weight)
    assert not kernels.supports(x.bfloat16(), torch.randn(8, 16).bfloat16())  # activations must be float32
    with pytest.raises(ValueError, match="features"):
        kernels.linear(torch.randn(1, 24), torch.randn(8, 16).bfloat16())


def test_build_reuses_the_library_and_reports_compiler_errors(tmp_path):
    if COMPILER is None:
        pytest.skip("no C compiler")
    source = tmp_path / "add.c"
    source.write_text("int add(int a, int b) { return a + b; }\n")
    flags = ("-O2", "-shared", "-fPIC")
    built = native.build_library(source, flags, tmp_path / "cache", compiler=COMPILER)
    stamp = built.stat().st_mtime_ns
    assert native.build_library(source, flags, tmp_path / "cache", compiler=COMPILER) == built
    assert built.stat().st_mtime_ns == stamp
    assert list((tmp_path / "cache").iterdir()) == [built]  # no temporary files left
    (tmp_path / "shared.h").write_text("#define ANSWER 42\n")  # a header beside it changed: rebuilt
    rebuilt = native.build_library(source, flags, tmp_path / "cache", compiler=COMPILER)
    assert rebuilt != built and rebuilt.exists()
    (tmp_path / "shared.h").unlink()
    rebuilt.unlink()

    source.write_text("int add(int a, int b) { return a + ; }\n")
    with pytest.raises(OSError, match="failed on add.c"):
        native.build_library(source, flags, tmp_path / "cache", compiler=COMPILER)
    with pytest.raises(OSError, match="no C compiler"):
        native.build_library(source, flags, tmp_path / "cache", compiler="no-such-compiler-here")
    assert len(list((tmp_path / "cache").iterdir())) == 1



@pytest.fixture(scope="module")
def attention():
    return _built("one_query_attention", native.one_query_attention())


def _reference_attention(q, k, v, first, last, scale):
    """Softmax attention in float64, one row and head at a time, with GQA by repetition."""
    batch, heads, head_dim = q.shape
    group = heads // k.shape[1]
    out = torch.empty(batch, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            keys = k[b, h // group, first[b]:last[b] + 1].double()
            values = v[b, h // group, first[b]:last[b] + 1].double()
            weights = torch.softmax(keys @ q[b, h].double() * scale, dim=0)
            out[b, h] = weights @ values
    return out.reshape(batch, heads * head_dim)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128, 40])
def test_one_query_attention_matches_softmax_attention_over_each_rows_keys(attention, dtype, head_dim):
    """Three sequences at different lengths, one with a window (first > 0), GQA (6 heads over
    2), keys read in place from a larger cache (strided)."""
    gen = torch.Generator().manual_seed(head_dim)
    cache_k = torch.randn(4, 2, 50, head_dim, generator=gen).to(dtype)
    cache_v = torch.randn(4, 2, 50, head_dim, generator=gen).to(dtype)
    k, v = cache_k[1:4, :, :37], cache_v[1:4, :, :37]
    q = torch.randn(3, 6, head_dim, generator=gen)
    first, last = torch.tensor([0, 0, 29]), torch.tensor([36, 4, 36])
    out = attention.attend(q, k, v, first, last, scale=head_dim ** -0.5)
    expected = _reference_attention(q, k, v, first, last, head_dim ** -0.5)
    assert out.shape == (3, 6 * head_dim)
    assert (out.double() - expected).abs().max() < 1e-5


def test_one_query_attention_refuses_what_it_cannot_compute(attention):
    q, kv = torch.randn(1, 6, 64), torch.randn(1, 2, 5, 64)
    assert attention.supports(q, kv, kv)
    assert not attention.supports(q.bfloat16(), kv, kv)  # queries must be float32
    assert not attention.supports(torch.randn(1, 5, 64), kv, kv)  # 5 heads cannot share 2 KV heads
    assert not attention.supports(torch.randn(1, 6, 36), torch.randn(1, 2, 5, 36), torch.randn(1, 2, 5, 36))
    with pytest.raises(ValueError, match="one entry per sequence"):
        attention.attend(q, kv, kv, torch.tensor([0, 0]), torch.tensor([4, 4]), 0.125)
    with pytest.raises(ValueError, match="cannot take"):
        attention.attend(q, kv, kv, torch.tensor([0.0]), torch.tensor([4]), 0.125)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_rms_norm_kernel_matches_pytorch(rows):
    kernel = _built("rms_norm", native.rms_norm_kernel())
    gen = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(2, rows, 72, generator=gen) * 3, torch.randn(72, generator=gen)
    assert kernel.supports(x, weight)
    assert not kernel.supports(x.bfloat16(), weight) and not kernel.supports(torch.randn(2, 12), torch.randn(12))
    expected = torch.nn.functional.rms_norm(x.double(), (72,), weight.double(), 1e-6)
    assert (kernel(x, weight, 1e-6).double() - expected).abs().max() < 1e-5
    strided = x.transpose(0, 1)  # not contiguous: the kernel reads a contiguous copy
    assert (kernel(strided, weight, 1e-6).double() - expected.transpose(0, 1)).abs().max() < 1e-5
