"""The resource sampler: ticks while a run lasts, and a closing sample for the tail."""

import os
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


def test_samples_follow_the_interval_and_end_with_the_tail():
    with ResourceSampler(interval_s=0.1) as sampler:
        time.sleep(0.35)
    times = [s["t_s"] for s in sampler.samples]
    assert len(times) >= 3 and times == sorted(times)
    assert times[-1] >= 0.35  # the closing sample covers the time after the last tick
