"""The native kernels: built from source on first use, exact float32 sums of 16-bit weights."""

import shutil
import pytest
import torch

from lmforge import native

COMPILER = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def kernels():
    built = native.half_linear_kernels()
    if built is None and COMPILER and native.cpu_runs_avx2():
        pytest.fail(f"the kernels should build on this machine: {native.unavailable_reason()}")
    if built is None:
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")
    return built


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

    source.write_text("int add(int a, int b) { return a + ; }\n")
    with pytest.raises(OSError, match="failed on add.c"):
        native.build_library(source, flags, tmp_path / "cache", compiler=COMPILER)
    with pytest.raises(OSError, match="no C compiler"):
        native.build_library(source, flags, tmp_path / "cache", compiler="no-such-compiler-here")
    assert len(list((tmp_path / "cache").iterdir())) == 1

