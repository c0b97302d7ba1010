"""Aggregates over request records: vLLM's TPOT/ITL definitions, percentiles, throughput, goodput."""

import numpy as np
import pytest

from lmforge.bench.records import RequestRecord, distribution, summarize
from lmforge.bench.slo import parse_slo


def make(index, ttft, gaps, prompt=10, error=None):
    times = list(np.cumsum([ttft, *gaps]))
    return RequestRecord(index, sent_s=0.1 * index, prompt_tokens=prompt, output_tokens=len(times), ttft_s=ttft,
                         e2e_s=times[-1] + 0.001, chunk_times_s=times, error=error)


def test_tpot_excludes_the_first_token_and_itl_is_every_gap():
    r = make(0, 0.3, [0.05, 0.07, 0.06])
    assert r.tpot_s == pytest.approx((r.e2e_s - 0.3) / 3)
    assert r.itl_s == pytest.approx([0.05, 0.07, 0.06])
    assert make(1, 0.3, []).tpot_s is None  # one token: no TPOT


def test_summary_matches_numpy_on_random_records():
    rng = np.random.default_rng(0)
    records = [make(i, float(rng.uniform(0.1, 0.9)), list(rng.uniform(0.01, 0.1, int(rng.integers(1, 20)))))
               for i in range(50)]
    records.append(RequestRecord(50, 5.0, error="http 429", error_detail="busy"))
    records.append(RequestRecord(51, 5.1, error="timeout"))
    s = summarize(records, duration_s=12.5, slo=parse_slo("ttft=500ms"))
    ok = records[:50]
    ttfts = [r.ttft_s for r in ok]
    assert s["requests"] == 52 and s["completed"] == 50 and s["errors"] == {"http 429": 1, "timeout": 1}
    for q in (50, 90, 99):
        assert s["ttft_s"][f"p{q}"] == pytest.approx(np.percentile(ttfts, q))
    assert s["ttft_s"]["mean"] == pytest.approx(np.mean(ttfts))
    assert s["itl_s"]["count"] == sum(r.output_tokens - 1 for r in ok)
    assert s["output_token_throughput"] == pytest.approx(sum(r.output_tokens for r in ok) / 12.5)
    assert s["request_throughput"] == pytest.approx(50 / 12.5)
    assert s["good_requests"] == sum(t < 0.5 for t in ttfts)
    assert s["goodput"] == pytest.approx(s["good_requests"] / 12.5)


def test_empty_distributions_are_none():
    assert distribution([]) is None
    s = summarize([RequestRecord(0, 0.0, error="connect")], 1.0)
    assert s["ttft_s"] is None and s["completed"] == 0 and s["request_throughput"] == 0


def test_records_round_trip_through_json_dicts():
    r = make(3, 0.2, [0.01, 0.02])
    assert RequestRecord.from_dict(r.to_dict()) == r
