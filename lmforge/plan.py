"""Memory of a model at each precision, whether it fits a device, and context-window budgets."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.precision import KV_CACHE_BYTES, PLAN_WEIGHT_BYTES

# Bytes per weight, scales included: INT8 per output channel (one fp16 scale per row is
# negligible), INT4 in groups of 128 with an fp16 scale and zero point per group.
WEIGHT_BYTES = PLAN_WEIGHT_BYTES
KV_BYTES = KV_CACHE_BYTES
PREFILL_CHUNK = 512

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'8GB' -> 8e9, '8GiB' -> 8 * 2**30, '512MB', '1.5g'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise LmforgeError(f"cannot read a memory size from {text!r} (try 8GB, 8GiB or 512MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def weight_bytes(config: ModelConfig, precision: str) -> float:
    # Norm weights (<0.1 % of a model) are counted at the same width as the rest.
    return config.num_parameters * WEIGHT_BYTES[precision]


def activation_bytes(config: ModelConfig, batch: int, context: int) -> float:
    """Peak working memory of one prefill chunk in float32: hidden states, MLP, logits."""
    tokens = batch * min(context, PREFILL_CHUNK)
    per_token = 4 * (4 * config.hidden_size + 3 * config.intermediate_size
                     + 2 * config.num_heads * config.head_dim)
    return tokens * per_token + batch * config.vocab_size * 4


@dataclass
class FitRow:
    precision: str
    weights: float
    kv_cache: float
    activations: float
    total: float
    usable: float
    fits: bool

    @property
    def headroom(self) -> float:
        return self.usable - self.total


def plan_fit(config: ModelConfig, device_memory: int, context: int, batch: int,
             kv_precision: str = "fp16", max_utilization: float = 0.8) -> list[FitRow]:
    if context <= 0 or batch <= 0:
        raise LmforgeError("context and batch must be positive")
    if not 0 < max_utilization <= 1:
        raise LmforgeError("max utilization must be in (0, 1]")
    if kv_precision not in KV_BYTES:
        raise LmforgeError(f"unknown KV-cache precision {kv_precision!r}; choose from {', '.join(KV_BYTES)}")
    usable = device_memory * max_utilization
    kv = config.kv_cache_bytes_per_token(KV_BYTES[kv_precision]) * context * batch
    act = activation_bytes(config, batch, context)
    rows = []
    for precision in WEIGHT_BYTES:
        w = weight_bytes(config, precision)
        total = w + kv + act
        rows.append(FitRow(precision, w, kv, act, total, usable, total <= usable))
    return rows


@dataclass
class ContextBudget:
    window: int
    parts: dict[str, int]

    @property
    def used(self) -> int:
        return sum(self.parts.values())

    @property
    def remaining(self) -> int:
        return self.window - self.used

    @property
    def fits(self) -> bool:
        return self.used <= self.window


def context_budget(window: int, **parts: int) -> ContextBudget:
    for name, value in parts.items():
        if value < 0:
            raise LmforgeError(f"--{name} must not be negative")
    return ContextBudget(window, dict(parts))
