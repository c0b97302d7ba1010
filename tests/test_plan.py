import pytest

from lmforge import catalogue
from lmforge.errors import LmforgeError
from lmforge.plan import WEIGHT_BYTES, context_budget, format_bytes, parse_bytes, plan_fit, weight_bytes


def test_parse_bytes_units():
    assert parse_bytes("8GB") == 8_000_000_000
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512 MB") == 512_000_000
    assert parse_bytes("1.5g") == 1_500_000_000
    for bad in ("eight", "8XB", ""):
        with pytest.raises(LmforgeError):
            parse_bytes(bad)


def test_six_billion_parameters_at_each_precision():
    # The seed's table: 24 / 12 / 6 / 3 GB for FP32 / FP16 / INT8 / INT4 (ignoring scales and norms).
    glm = catalogue.lookup("chatglm3-6b")
    n = glm.num_parameters
    assert weight_bytes(glm, "fp32") == pytest.approx(4 * n, rel=1e-4)
    assert weight_bytes(glm, "fp16") == pytest.approx(2 * n, rel=1e-4)
    assert weight_bytes(glm, "int8") == pytest.approx(n, rel=1e-4)
    assert weight_bytes(glm, "int4") == pytest.approx(n * WEIGHT_BYTES["int4"], rel=1e-4)


def test_fit_adds_weights_kv_and_activations_against_usable_memory():
    config = catalogue.lookup("llama-2-7b")
    rows = {r.precision: r for r in plan_fit(config, parse_bytes("8GB"), context=4096, batch=1)}
    kv = 2 * 32 * 32 * 128 * 2 * 4096
    assert rows["fp16"].kv_cache == kv
    for r in rows.values():
        assert r.total == pytest.approx(r.weights + r.kv_cache + r.activations)
        assert r.usable == pytest.approx(0.8 * 8e9)
        assert r.fits == (r.total <= r.usable)
    assert not rows["fp16"].fits and rows["int4"].fits
    # More sequences need more KV cache: the same model stops fitting.
    assert not {r.precision: r for r in plan_fit(config, parse_bytes("8GB"), 4096, 4)}["int4"].fits


def test_context_budget_from_the_seed():
    budget = context_budget(8192, prompt=1000, history=2000, retrieval=3000)
    assert budget.used == 6000 and budget.fits and budget.remaining == 2192
    tight = context_budget(4096, prompt=1000, history=2000, retrieval=3000)
    assert not tight.fits and tight.remaining == -1904


def test_format_bytes():
    assert format_bytes(1.5e9) == "1.50 GB"
    assert format_bytes(2048) == "2.05 KB"
