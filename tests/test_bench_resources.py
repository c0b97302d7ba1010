"""The resource sampler: ticks while a run lasts, and a closing sample for the tail."""

import itertools
import os
import threading
import time

from lmforge.bench.resources import ResourceSampler


def test_a_run_shorter_than_one_interval_still_has_a_sample():
    with ResourceSampler(interval_s=5, pid=os.getpid()) as sampler:
        pass
    assert len(sampler.samples) == 1
    sample = sampler.samples[0]
    assert 0 <= sample["cpu_utilization"] <= 1 and 0 < sample["memory_fraction"] < 1
    assert sample["process_rss_bytes"] > 10e6  # this Python process
    assert sampler.summary()["samples"] == 1


def test_samples_follow_the_clock_and_end_with_the_tail():
    """A fake clock makes the times exact; the test waits for ticks instead of timing them."""
    ticks = itertools.count()
    lock = threading.Lock()

    def clock():
        with lock:
            return float(next(ticks))

    with ResourceSampler(interval_s=0.01, clock=clock) as sampler:
        deadline = time.monotonic() + 30
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        ticked = len(sampler.samples)
    times = [s["t_s"] for s in sampler.samples]
    assert ticked >= 3 and len(times) >= ticked + 1  # the ticks, then the closing sample
    assert times == list(range(1, len(times) + 1))  # each sample read the clock once, in order
