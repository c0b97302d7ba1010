"""CPU, memory (and GPU, where nvidia-smi exists) sampled on a thread while a benchmark runs."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import psutil


def _gpu_sample() -> dict | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        util, used, total = (float(x) for x in out.stdout.splitlines()[0].split(","))
        return {"gpu_utilization": util / 100, "gpu_memory_fraction": used / total}
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _tree_rss(pid: int) -> int | None:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return None


class ResourceSampler:
    """Use as a context manager; `samples` and `summary()` afterwards.

    pid: a process (with its children) whose resident memory is recorded too, e.g. the server.
    clock: seconds (a test passes its own to check the samples' times)."""

    def __init__(self, interval_s: float = 0.5, pid: int | None = None, clock=time.perf_counter):
        self.interval_s = interval_s
        self.pid = pid
        self.clock = clock
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> "ResourceSampler":
        self._start = self.clock()
        psutil.cpu_percent(None)  # the first call only sets the baseline
        self._thread = threading.Thread(target=self._run, daemon=True, name="lmforge-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._take_sample()  # the tail since the last tick: a run shorter than one interval has one too

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take_sample()

    def _take_sample(self) -> None:
        memory = psutil.virtual_memory()
        sample = {"t_s": self.clock() - self._start, "cpu_utilization": psutil.cpu_percent(None) / 100,
                  "memory_fraction": memory.percent / 100, "memory_used_bytes": memory.total - memory.available}
        if self.pid is not None:
            sample["process_rss_bytes"] = _tree_rss(self.pid)
        gpu = _gpu_sample()
        if gpu:
            sample.update(gpu)
        self.samples.append(sample)

    def summary(self) -> dict:
        return summarize_samples(self.samples)


def summarize_samples(samples: list[dict]) -> dict:
    def values(key):
        return [s[key] for s in samples if s.get(key) is not None]

    out = {"samples": len(samples), "memory_total_bytes": psutil.virtual_memory().total}
    for key in ("cpu_utilization", "gpu_utilization"):
        v = values(key)
        if v:
            out[key + "_mean"] = sum(v) / len(v)
            out[key + "_max"] = max(v)
    for key in ("memory_fraction", "memory_used_bytes", "process_rss_bytes", "gpu_memory_fraction"):
        v = values(key)
        if v:
            out[key + "_max"] = max(v)
    return out
