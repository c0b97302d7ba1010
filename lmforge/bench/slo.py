"""Service-level objectives: parsing `--slo ttft=500ms,tps=20,...` and the seed's checklist.

A request is *good* when it meets every per-request objective (ttft, tpot, itl, e2e, tps); the run
as a whole is judged on the checklist lines (TPS, TTFT, CPU utilisation, memory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError

# key -> (kind, upper bound?)  Upper bounds must not be exceeded; lower bounds must be reached.
KEYS = {
    "ttft": ("duration", True),
    "tpot": ("duration", True),
    "itl": ("duration", True),
    "e2e": ("duration", True),
    "tps": ("rate", False),          # decode tokens/s of one stream (1 / TPOT)
    "memory": ("percent", True),     # peak memory, % of the device's memory
    "utilization": ("percent", False),  # mean CPU (or GPU) utilisation during the run
}
ALIASES = {"utilisation": "utilization", "util": "utilization", "mem": "memory", "latency": "e2e"}
PER_REQUEST = ("ttft", "tpot", "itl", "e2e", "tps")
SEED_DEFAULTS = "ttft=500ms,tps=20,utilization=70%,memory=80%"
_DURATION = re.compile(r"^([0-9]*\.?[0-9]+)\s*(ms|s)?$")


@dataclass
class SLO:
    """Objectives in SI units: seconds, tokens/s, fractions (0.8 for 80 %)."""
    limits: dict[str, float] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.limits

    def request_is_good(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float | None,
                        max_itl_s: float | None) -> bool:
        measured = {"ttft": ttft_s, "tpot": tpot_s, "e2e": e2e_s, "itl": max_itl_s,
                    "tps": None if not tpot_s else 1 / tpot_s}
        for key in PER_REQUEST:
            if key not in self.limits or measured[key] is None:
                continue
            if not meets(key, measured[key], self.limits[key]):
                return False
        return True

    def to_text(self) -> str:
        return ",".join(f"{k}={format_limit(k, v)}" for k, v in self.limits.items())


def meets(key: str, value: float, limit: float) -> bool:
    """Strictly inside the limit, as the seed writes its checklist (TTFT < 500 ms, TPS > 20)."""
    return value < limit if KEYS[key][1] else value > limit


def format_limit(key: str, value: float) -> str:
    kind = KEYS[key][0]
    if kind == "duration":
        return f"{value * 1e3:g}ms"
    if kind == "percent":
        return f"{value * 100:g}%"
    return f"{value:g}"


def parse_slo(text: str) -> SLO:
    """'ttft=500ms,tpot=50ms,e2e=2s,tps=20,memory=80%,utilization=70%'.

    Durations take ms or s (a bare number is milliseconds); percentages take % or a bare number."""
    limits: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise LmforgeError(f"--slo: {part!r} is not KEY=VALUE (e.g. ttft=500ms,tps=20)")
        key, value = (s.strip().lower() for s in part.split("=", 1))
        key = ALIASES.get(key, key)
        if key not in KEYS:
            raise LmforgeError(f"--slo: unknown objective {key!r}; known: {', '.join(KEYS)}")
        limits[key] = _parse_value(key, value)
    if not limits:
        raise LmforgeError("--slo: give at least one objective (e.g. ttft=500ms,tps=20)")
    return SLO(limits)


def _parse_value(key: str, value: str) -> float:
    kind = KEYS[key][0]
    if kind == "duration":
        m = _DURATION.match(value)
        if not m:
            raise LmforgeError(f"--slo: {key}={value!r} is not a duration (e.g. 500ms or 0.5s)")
        number = float(m.group(1))
        return number if m.group(2) == "s" else number / 1e3
    if kind == "percent":
        m = re.match(r"^([0-9]*\.?[0-9]+)\s*%?$", value)
        if not m or not 0 < float(m.group(1)) <= 100:
            raise LmforgeError(f"--slo: {key}={value!r} is not a percentage in (0, 100] (e.g. 80%)")
        return float(m.group(1)) / 100
    m = re.match(r"^([0-9]*\.?[0-9]+)\s*(tok/s|/s)?$", value)
    if not m or float(m.group(1)) <= 0:
        raise LmforgeError(f"--slo: {key}={value!r} is not a positive rate (e.g. tps=20)")
    return float(m.group(1))


@dataclass
class CheckLine:
    objective: str      # e.g. "TTFT p50 < 500 ms"
    measured: str       # e.g. "312 ms"
    passed: bool | None  # None: not measured

    def to_dict(self) -> dict:
        return {"objective": self.objective, "measured": self.measured, "passed": self.passed}


def checklist(slo: SLO, *, tps: float | None, ttft_s: float | None, tpot_s: float | None = None,
              e2e_s: float | None = None, utilization: float | None = None,
              memory_fraction: float | None = None, utilization_of: str = "CPU") -> list[CheckLine]:
    """The seed's monitoring checklist, one line per objective in `slo`, judged on run medians.

    tps, ttft_s, tpot_s, e2e_s: medians over requests; utilization, memory_fraction: 0..1."""
    values = {"tps": tps, "ttft": ttft_s, "tpot": tpot_s, "e2e": e2e_s, "itl": None,
              "utilization": utilization, "memory": memory_fraction}
    names = {"tps": "TPS (decode tokens/s per stream, p50)", "ttft": "TTFT p50", "tpot": "TPOT p50",
             "e2e": "end-to-end latency p50", "itl": "inter-token latency",
             "utilization": f"{utilization_of} utilisation (mean during the run)",
             "memory": "memory (peak, of the device's)"}
    lines = []
    for key, limit in slo.limits.items():
        value = values[key]
        op = "<" if KEYS[key][1] else ">"
        objective = f"{names[key]} {op} {_human(key, limit)}"
        if value is None:
            lines.append(CheckLine(objective, "not measured", None))
        else:
            lines.append(CheckLine(objective, _human(key, value), meets(key, value, limit)))
    return lines


def _human(key: str, value: float) -> str:
    kind = KEYS[key][0]
    if kind == "duration":
        return f"{value * 1e3:.0f} ms" if value < 10 else f"{value:.1f} s"
    if kind == "percent":
        return f"{value * 100:.0f} %"
    return f"{value:.1f} tok/s"
