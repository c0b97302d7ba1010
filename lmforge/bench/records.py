"""One request's measurements and the aggregates over a run (vLLM's definitions).

TTFT: sending the request -> the first content chunk. TPOT: (end - first token) / (output tokens - 1),
so the first token is excluded. ITL: gaps between consecutive content chunks. E2E: sending -> the end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from lmforge.bench.slo import SLO

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    index: int
    sent_s: float                     # when it was sent, from the start of the run
    prompt_tokens: int | None = None
    output_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # content chunk arrivals, from sending
    error: str | None = None          # its kind: "connect", "timeout", "http 429", "incomplete stream", ...
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times_s, self.chunk_times_s[1:])]

    def to_dict(self) -> dict:
        return {**asdict(self), "tpot_s": self.tpot_s, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict) -> "RequestRecord":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def distribution(values: list[float]) -> dict | None:
    """mean, p50, p90, p99 (linear interpolation, as numpy and vLLM compute them), min, max."""
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    out = {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "count": int(a.size)}
    out.update({f"p{q}": float(np.percentile(a, q)) for q in PERCENTILES})
    return out


def summarize(records: list[RequestRecord], duration_s: float, slo: SLO | None = None) -> dict:
    """Aggregates of one load level: latencies, throughput, goodput, errors by kind."""
    done = [r for r in records if r.ok]
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens or 0 for r in done)
    tpots = [r.tpot_s for r in done if r.tpot_s is not None]
    summary = {
        "requests": len(records), "completed": len(done), "failed": len(records) - len(done),
        "errors": dict(Counter(r.error for r in records if not r.ok)),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s if duration_s > 0 else 0.0,
        "output_token_throughput": output / duration_s if duration_s > 0 else 0.0,
        "total_token_throughput": (output + prompt) / duration_s if duration_s > 0 else 0.0,
        "output_tokens": output, "prompt_tokens": prompt,
        "ttft_s": distribution([r.ttft_s for r in done if r.ttft_s is not None]),
        "tpot_s": distribution(tpots),
        "itl_s": distribution([gap for r in done for gap in r.itl_s]),
        "e2e_s": distribution([r.e2e_s for r in done if r.e2e_s is not None]),
        "stream_tps": distribution([1 / t for t in tpots if t > 0]),
    }
    if slo is not None:
        good = [r for r in done if slo.request_is_good(r.ttft_s, r.tpot_s, r.e2e_s, max(r.itl_s, default=None))]
        summary["slo"] = slo.to_text()
        summary["good_requests"] = len(good)
        summary["goodput"] = len(good) / duration_s if duration_s > 0 else 0.0
    return summary
