"""Predicted speed of a model on a device profile.

Decode is memory-bound: a step reads every weight once, so its time is the weight bytes over the
bandwidth the kernels reach for matrices of that size, plus the KV cache read at memory bandwidth,
plus the fixed costs of a step and of each layer the probe measured. Prefill is compute-bound:
FLOPs over the rate of a prefill-sized product. A hand-written profile (peaks, no kernel figures)
gives upper bounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmforge.config import ModelConfig
from lmforge.device.probe import bytes_per_weight
from lmforge.device.profile import DeviceProfile
from lmforge.errors import LmforgeError
from lmforge.precision import TORCH_PRECISIONS

PRECISIONS = TORCH_PRECISIONS  # what a device profile predicts


@dataclass
class Prediction:
    backend: str
    precision: str
    decode_tokens_per_s: float
    decode_s_per_token: float
    prefill_tokens: int
    prefill_s: float
    weight_bytes_per_token: float
    kv_bytes_per_token: float
    basis: str  # "measured kernels" or "peak figures"

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s

    def to_dict(self) -> dict:
        return {**asdict(self), "prefill_tokens_per_s": self.prefill_tokens_per_s}


def _matrices(config: ModelConfig) -> list[tuple[int, int, int]]:
    """(rows, cols, how many) of the products one decode step runs, q|k|v and gate|up fused."""
    h, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layers = config.num_layers
    return [(q + 2 * kv, h, layers), (h, q, layers), (2 * config.intermediate_size, h, layers),
            (h, config.intermediate_size, layers)]


def head_precision(precision: str) -> str:
    """lmforge keeps the output layer at INT8 when the body is INT4 (INT4 there costs too much quality)."""
    return "int8" if precision == "int4" else precision


def _kv_element_bytes(backend: str, precision: str) -> int:
    return 4 if backend == "onnxruntime" or precision == "fp32" else 2


def predict(config: ModelConfig, profile: DeviceProfile, precision: str, backend: str = "onnxruntime",
            context: int = 128, prefill_tokens: int = 512, batch: int = 1) -> Prediction:
    """Decode tokens/s (of each of `batch` sequences at `context` positions) and prefill time."""
    if precision not in PRECISIONS:
        raise LmforgeError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    rates = profile.rates(backend, precision)
    head_rates = profile.rates(backend, head_precision(precision)) or rates
    measured = rates is not None and bool(rates.stream)

    def stream_s(rows: int, cols: int, prec: str, r) -> float:
        size = rows * cols * bytes_per_weight(backend, prec)
        bandwidth = (r.bandwidth_at(size) if r is not None and r.stream else None) or profile.memory_bandwidth
        return size / bandwidth

    weights_s = sum(n * stream_s(rows, cols, precision, rates) for rows, cols, n in _matrices(config))
    head = (config.vocab_size, config.hidden_size)
    weights_s += stream_s(*head, head_precision(precision), head_rates)
    weight_bytes = (sum(n * r * c for r, c, n in _matrices(config)) * bytes_per_weight(backend, precision)
                    + head[0] * head[1] * bytes_per_weight(backend, head_precision(precision)))
    kv_bytes = config.kv_cache_bytes_per_token(_kv_element_bytes(backend, precision)) * context
    # lmforge's torch attention runs in float32: a 2-byte cache is read, written as 4 bytes, read again
    kv_traffic = kv_bytes * (5 if _kv_element_bytes(backend, precision) == 2 and backend == "torch" else 1)
    fixed_s = ((rates.step_s or 0.0) + config.num_layers * (rates.layer_s or 0.0)) if rates else 0.0
    if rates is not None and batch > 1:  # several rows per product cost more than one where measured
        weights_s *= rates.batch_factor(batch)
    step_s = weights_s + batch * kv_traffic / profile.memory_bandwidth + fixed_s

    peak = profile.compute.get(precision) or profile.compute.get("fp16") or profile.compute.get("fp32")
    if not peak and not (rates and rates.compute):
        raise LmforgeError(f"profile {profile.name}: no compute figure for {precision}")

    def flop_rate(rows: int, cols: int) -> float:
        return (rates.compute_at(rows * cols * bytes_per_weight(backend, precision)) if rates else None) or peak

    t = prefill_tokens
    prefill_s = sum(n * 2 * t * r * c / flop_rate(r, c) for r, c, n in _matrices(config))
    prefill_s += 2 * head[0] * head[1] / flop_rate(*head)  # the last position only
    attention_flops = 2 * 2 * config.num_layers * config.num_heads * config.head_dim * t * (t + 1) / 2
    attention_rate = profile.compute.get("attention") or flop_rate(config.hidden_size, config.hidden_size)
    prefill_s += attention_flops / attention_rate + fixed_s
    return Prediction(backend, precision, batch / step_s, step_s, t, prefill_s, weight_bytes, kv_bytes,
                      "measured kernels" if measured else "peak figures")


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured
