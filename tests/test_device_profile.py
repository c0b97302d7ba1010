"""Device profiles: shipped and hand-written ones (YAML or JSON, units as text), probing this machine."""

import json

import psutil
import pytest

from lmforge.cli import main
from lmforge.device.probe import probe
from lmforge.device.profile import KernelRates, load_profile, save_profile, shipped_profiles
from lmforge.errors import LmforgeError


def test_the_shipped_8gb_accelerator_profile():
    assert "accelerator-8gb" in shipped_profiles()
    p = load_profile("accelerator-8gb")
    assert p.memory_bytes == 8_000_000_000 and p.memory_bandwidth == 68e9
    assert p.compute["int8"] == 32e12 and p.compute["fp16"] == 16e12 and not p.kernels


def test_yaml_and_json_files_and_a_round_trip(tmp_path):
    (tmp_path / "chip.yaml").write_text("name: chip\nmemory: 16GiB\nmemory_bandwidth: 100 GB/s\n"
                                        "compute: {fp16: 50TFLOPS, int8: 1e14}\n")
    p = load_profile(tmp_path / "chip.yaml")
    assert p.memory_bytes == 16 * 2**30 and p.memory_bandwidth == 100e9 and p.compute["int8"] == 1e14
    p.kernels["onnxruntime/int8"] = KernelRates([(1e6, 5e9), (1e8, 9e9)], 2e11, [(1e6, 1e11)], 1e-4, 2e-5,
                                                [(1.0, 1.0), (4.0, 1.5)])
    save_profile(p, tmp_path / "chip.json")
    again = load_profile(tmp_path / "chip.json")
    assert again == p
    json.loads((tmp_path / "chip.json").read_text())  # plain JSON


@pytest.mark.parametrize("text, message", [
    ("memory: 8GB\ncompute: {fp16: 1TFLOPS}\n", "missing memory_bandwidth"),
    ("memory: 8GB\nmemory_bandwidth: fast\ncompute: {fp16: 1TFLOPS}\n", "cannot read a rate"),
    ("memory: lots\nmemory_bandwidth: 1GB/s\ncompute: {fp16: 1TFLOPS}\n", "memory size"),
    ("memory: 8GB\nmemory_bandwidth: 1GB/s\ncompute: {fp64: 1TFLOPS}\n", "unknown dtype"),
    ("memory: [1, 2\n", "not valid YAML"),
    ("- just a list\n", "is a mapping"),
])
def test_bad_profiles_are_clear_errors(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(LmforgeError, match=message):
        load_profile(tmp_path / "bad.yaml")
    with pytest.raises(LmforgeError, match="no such device profile"):
        load_profile(tmp_path / "missing.yaml")


def test_curves_interpolate_in_log_size_and_batches_linearly():
    r = KernelRates(stream=[(1e6, 4e9), (1e8, 8e9)], batch_cost=[(1.0, 1.0), (2.0, 1.2), (4.0, 2.0)])
    assert r.bandwidth_at(1e5) == 4e9 and r.bandwidth_at(1e9) == 8e9  # flat outside
    assert r.bandwidth_at(1e7) == pytest.approx(6e9)                     # halfway in log size
    assert r.batch_factor(1) == 1.0 and r.batch_factor(3) == pytest.approx(1.6)
    assert r.batch_factor(6) == pytest.approx(2.8)                       # the last slope, extended


def test_probe_measures_this_machine_small_and_quick(tmp_path):
    p = probe(repeats=2, kernels=[("torch", "fp32"), ("onnxruntime", "int4")], rows=(256, 1024),
              stream_bytes=16 * 2**20)
    assert p.memory_bytes == psutil.virtual_memory().total
    assert 1e8 < p.memory_bandwidth < 1e12
    assert set(p.kernels) == {"torch/fp32", "onnxruntime/int4"}
    for rates in p.kernels.values():
        assert [size for size, _ in rates.stream] == sorted(size for size, _ in rates.stream) and len(rates.stream) == 2
        assert all(1e8 < bw < 1e12 for _, bw in rates.stream)
        assert rates.compute > 1e9 and rates.step_s >= 0 and rates.layer_s >= 0
        assert rates.batch_cost[0] == (1.0, 1.0) and len(rates.batch_cost) == 4
    assert p.compute["fp32"] == p.kernels["torch/fp32"].compute and p.compute["attention"] > 1e8
    # an INT4 weight is ~1/6 the bytes of a float32 one
    assert p.kernels["onnxruntime/int4"].stream[0][0] < p.kernels["torch/fp32"].stream[0][0] / 5


def test_probe_command_writes_a_profile_that_loads(tmp_path, capsys):
    out = tmp_path / "me.json"
    assert main(["probe", "--out", str(out), "--quick", "--name", "here"]) == 0
    assert "here" in capsys.readouterr().out
    p = load_profile(out)
    assert p.name == "here" and len(p.kernels) == 5
