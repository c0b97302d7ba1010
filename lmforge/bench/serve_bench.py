"""`lmforge bench serve`: load levels against a server, with resources sampled, into one JSON.

The JSON is rewritten after every level, so an interrupted or failing run keeps what it measured."""

from __future__ import annotations

import asyncio
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmforge.atomic import write_json
from lmforge.bench.loadgen import LoadSpec, closed_loop, open_loop
from lmforge.bench.records import RequestRecord, summarize
from lmforge.bench.resources import ResourceSampler
from lmforge.bench.slo import SLO
from lmforge.errors import LmforgeError
from lmforge.progress import console as progress_console

KIND = "serve-bench"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def default_requests(mode: str, value: float) -> int:
    """Enough requests that every client sends a few (closed) or ~20 s of arrivals (open)."""
    return max(8, 4 * int(value)) if mode == "concurrency" else max(8, int(round(20 * value)))


def level_requests(mode: str, values: list[float], num_requests: int | None) -> list[int]:
    return [num_requests or default_requests(mode, v) for v in values]


def run_serve_bench(spec: LoadSpec, concurrencies: list[int] | None = None, rates: list[float] | None = None,
                    num_requests: int | None = None, warmup: int = 1, slo: SLO | None = None, seed: int = 0,
                    max_concurrency: int | None = None, server_pid: int | None = None,
                    out: str | Path | None = None, prompt_source: str = "", show_progress: bool = True,
                    label: str | None = None) -> dict:
    if bool(concurrencies) == bool(rates):
        raise LmforgeError("give either concurrency levels or request rates")
    mode, values = ("concurrency", concurrencies) if concurrencies else ("rate", rates)
    if any(v <= 0 for v in values):
        raise LmforgeError(f"{mode} levels must be positive")
    result = {"kind": KIND, "label": label or spec.model, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "url": spec.url, "model": spec.model, "endpoint": spec.endpoint,
              "max_tokens": spec.max_tokens, "ignore_eos": spec.ignore_eos, "prompts": prompt_source,
              "mode": mode, "slo": slo.to_text() if slo else None, "levels": [], "complete": False}
    counts = level_requests(mode, values, num_requests)
    if warmup:  # prompts after the measured ones, so a server's response cache cannot help them
        asyncio.run(closed_loop(spec, 1, warmup, first_index=sum(counts)))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=progress_console, transient=True, disable=not show_progress) as bar:
        task = bar.add_task("requests", total=sum(counts))
        first = 0
        for value, count in zip(values, counts):
            bar.update(task, description=f"{mode} {value:g}")
            failures: list[RequestRecord] = []

            def done(record: RequestRecord):
                bar.advance(task)
                if not record.ok:
                    failures.append(record)

            with ResourceSampler(pid=server_pid) as sampler:
                if mode == "concurrency":
                    records, wall = asyncio.run(closed_loop(spec, int(value), count, first, done))
                else:
                    records, wall = asyncio.run(open_loop(spec, value, count, first, seed, max_concurrency, done))
            first += count
            records.sort(key=lambda r: r.index)
            result["levels"].append({"mode": mode, "value": value, "summary": summarize(records, wall, slo),
                                     "resources": sampler.summary(), "resource_samples": sampler.samples,
                                     "records": [r.to_dict() for r in records]})
            if out:
                write_json(out, result)
    result["complete"] = True
    if out:
        write_json(out, result)
    return result
