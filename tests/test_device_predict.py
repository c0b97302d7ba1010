"""Predictions from a profile: bytes over bandwidth (decode), FLOPs over compute (prefill)."""

import pytest

from lmforge.bench.slo import parse_slo
from lmforge.deploy.choose import choose, evaluate_candidates
from lmforge.device.predict import predict, relative_error
from lmforge.device.profile import DeviceProfile, KernelRates
from lmforge.errors import LmforgeError
from lmforge.loading import load_config

BANDWIDTH, FLOPS = 10e9, 100e9


@pytest.fixture(scope="module")
def config():
    return load_config("llama-2-7b")[0]


def flat_profile(memory=8e9, **kernels) -> DeviceProfile:
    return DeviceProfile("flat", int(memory), BANDWIDTH, {"fp32": FLOPS, "int8": 4 * FLOPS, "int4": 4 * FLOPS},
                         kernels=kernels)


def test_decode_from_peak_figures_is_weight_and_cache_bytes_over_bandwidth(config):
    counts = config.parameter_counts()
    p = predict(config, flat_profile(), "fp32", "torch", context=1000, prefill_tokens=100)
    linear = counts["attention"] + counts["mlp"]  # the decoder layers' products (no biases in Llama 2)
    expected_bytes = 4 * (linear + config.vocab_size * config.hidden_size)
    kv = config.kv_cache_bytes_per_token(4) * 1000
    assert p.weight_bytes_per_token == pytest.approx(expected_bytes)
    assert p.decode_s_per_token == pytest.approx((expected_bytes + kv) / BANDWIDTH)
    assert p.basis == "peak figures"
    flops = 2 * 100 * linear + 2 * config.vocab_size * config.hidden_size \
        + 2 * 2 * config.num_layers * config.num_heads * config.head_dim * 100 * 101 / 2
    assert p.prefill_s == pytest.approx(flops / FLOPS)


def test_fewer_bytes_decode_faster_and_int4_keeps_an_int8_head(config):
    profile = flat_profile()
    fp32, int8, int4 = (predict(config, profile, p, "onnxruntime") for p in ("fp32", "int8", "int4"))
    assert fp32.decode_tokens_per_s < int8.decode_tokens_per_s < int4.decode_tokens_per_s
    head = config.vocab_size * config.hidden_size
    body = (fp32.weight_bytes_per_token - 4 * head) / 4  # weights in the decoder layers
    assert int8.weight_bytes_per_token == pytest.approx((body + head) * (1 + 4 / 32))  # a float scale per 32
    assert int4.weight_bytes_per_token == pytest.approx(body * (0.5 + 4 / 32) + head * (1 + 4 / 32))


def test_measured_kernels_and_fixed_costs_and_batches(config):
    rates = KernelRates(stream=[(1e3, BANDWIDTH / 2)], compute=FLOPS / 2, step_s=0.001, layer_s=0.0002,
                        batch_cost=[(1.0, 1.0), (4.0, 2.0)])
    peak = predict(config, flat_profile(), "fp32", "torch", context=0)
    measured = predict(config, flat_profile(**{"torch/fp32": rates}), "fp32", "torch", context=0)
    fixed = 0.001 + config.num_layers * 0.0002
    assert measured.basis == "measured kernels"
    assert measured.decode_s_per_token == pytest.approx(2 * peak.decode_s_per_token + fixed)
    batch4 = predict(config, flat_profile(**{"torch/fp32": rates}), "fp32", "torch", context=0, batch=4)
    assert batch4.decode_s_per_token == pytest.approx(2 * 2 * peak.decode_s_per_token + fixed)
    assert batch4.decode_tokens_per_s == pytest.approx(4 / batch4.decode_s_per_token)
    assert relative_error(13.0, 10.0) == pytest.approx(0.3)


def test_unknown_precision_and_missing_compute(config):
    with pytest.raises(LmforgeError, match="unknown precision"):
        predict(config, flat_profile(), "int3")
    with pytest.raises(LmforgeError, match="no compute figure"):
        predict(config, DeviceProfile("x", 10**9, 1e9, {"int8": 1e12}), "bf16", "torch")


def test_choose_the_most_accurate_precision_predicted_to_meet_the_slos(config):
    profile = flat_profile(memory=16e9)
    loose = evaluate_candidates(config, profile, parse_slo("tps=0.5"), ["fp32", "int8", "int4"],
                                max_concurrency=1, context=512)
    assert [c.fits for c in loose] == [False, True, True]  # 7B in fp32 needs ~27 GB
    assert choose(loose)[0].precision == "int8"
    between = (loose[1].stream_tokens_per_s_at_load + loose[2].stream_tokens_per_s_at_load) / 2
    tight = evaluate_candidates(config, profile, parse_slo(f"tps={between}"), ["fp32", "int8", "int4"],
                                max_concurrency=1, context=512)
    assert [c.meets_slo for c in tight] == [False, False, True]
    assert choose(tight)[0].precision == "int4"
    assert "tok/s per stream" in tight[1].reasons[0]
    impossible = evaluate_candidates(config, profile, parse_slo("tps=1000"), ["int8", "int4"], max_concurrency=1)
    chosen, why = choose(impossible)
    assert chosen.precision == "int4" and "no precision is predicted" in why
    with pytest.raises(LmforgeError, match="no precision fits"):
        choose(evaluate_candidates(config, flat_profile(memory=1e9), parse_slo("tps=1"), ["int8", "int4"]))
