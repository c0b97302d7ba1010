"""A short run of the soak benchmark's traffic (benchmarks/bench_soak.py runs it for 30 minutes):
every kind of request in the mix, a burst past the queue, and how outcomes are judged."""

import asyncio
import random
import sys
from pathlib import Path

import pytest
from test_serve import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_soak import MIX, Tally, request_for, soak  # noqa: E402


def test_outcomes_are_judged_by_kind():
    tally = Tally()
    for kind, outcome in [("chat", 200), ("completion", 429), ("completion", 503), ("malformed", 422),
                          ("no_key", 401)]:
        tally.add(kind, outcome)
    assert tally.unexpected == []
    for kind, outcome in [("chat", 500), ("malformed", 200), ("no_key", 200), ("generate", "connection_error"),
                          ("chat_stream", "error_event"), ("tokenize", 400)]:
        tally.add(kind, outcome)
    assert len(tally.unexpected) == 6
    assert tally.totals()["200"] == 3


def test_the_mix_is_seeded():
    first = [request_for(kind, random.Random(3)) for kind in MIX]
    again = [request_for(kind, random.Random(3)) for kind in MIX]
    assert first == again
    assert all(path.startswith("/") for path, _, _ in first)


@pytest.mark.slow
def test_a_short_soak_has_no_unexpected_answer():
    server = Server("--max-batch", "2", "--max-queue", "2", "--api-key", "k", "--max-seq-len", "256")
    try:
        tally = asyncio.run(soak(server.url, seconds=12, workers=3, seed=0, burst_every=4, burst_size=10,
                                 kinds=MIX, headers={"Authorization": "Bearer k"}, on_tick=lambda tally: None))
    finally:
        server.stop()
    assert tally.unexpected == [], tally.unexpected[:5]
    totals = tally.totals()
    assert totals["200"] > 0 and totals["429"] + totals["503"] > 0  # the bursts went past the queue
    assert {"malformed", "no_key", "completion"} <= set(tally.by_kind)
