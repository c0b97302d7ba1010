"""Which precision to deploy: the most accurate one that fits the device and is predicted to meet
the SLOs at the highest load asked for; failing that, the fastest that fits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lmforge.bench.slo import SLO
from lmforge.config import ModelConfig
from lmforge.device.predict import predict
from lmforge.device.profile import DeviceProfile
from lmforge.errors import LmforgeError
from lmforge.plan import plan_fit
from lmforge.precision import TORCH_PRECISIONS

ORDER = TORCH_PRECISIONS  # most accurate first


@dataclass
class Candidate:
    precision: str
    fits: bool
    memory_bytes: float          # weights + KV cache + working memory
    usable_bytes: float
    decode_tokens_per_s: float   # predicted, one stream alone
    stream_tokens_per_s_at_load: float  # predicted, each stream with max_concurrency running
    ttft_s: float                # predicted, under that load
    meets_slo: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_candidates(config: ModelConfig, profile: DeviceProfile, slo: SLO, precisions: list[str],
                        backend: str = "onnxruntime", context: int = 2048, max_concurrency: int = 4,
                        prompt_tokens: int = 128, max_tokens: int = 64,
                        max_utilization: float = 0.8) -> list[Candidate]:
    """Each precision's fit and predicted speed under a closed loop of `max_concurrency` clients.

    Under load a stream's token also waits for the other clients' prompts: each of the C clients
    sends a new prompt every `max_tokens` tokens, and its prefill holds up every stream, so a
    stream's time per token is step(C) + C * prefill / max_tokens; TTFT is prefill + one step."""
    fit_rows = {row.precision: row for row in plan_fit(config, profile.memory_bytes, context, max_concurrency,
                                                       "fp32" if backend == "onnxruntime" else "bf16", max_utilization)}
    candidates = []
    for precision in precisions:
        row = fit_rows[precision]
        alone = predict(config, profile, precision, backend, context=prompt_tokens, prefill_tokens=prompt_tokens)
        loaded = predict(config, profile, precision, backend, context=prompt_tokens, prefill_tokens=prompt_tokens,
                         batch=max_concurrency)
        stream_s = loaded.decode_s_per_token + max_concurrency * alone.prefill_s / max_tokens
        per_stream = 1 / stream_s
        ttft_s = alone.prefill_s + loaded.decode_s_per_token
        reasons = []
        if not row.fits:
            reasons.append(f"needs {row.total / 1e9:.2f} GB of {row.usable / 1e9:.2f} GB usable")
        if "tps" in slo and per_stream < slo.limits["tps"]:
            reasons.append(f"{per_stream:.1f} tok/s per stream at {max_concurrency} < {slo.limits['tps']:g}")
        if "tpot" in slo and 1 / per_stream > slo.limits["tpot"]:
            reasons.append(f"TPOT {1e3 / per_stream:.0f} ms at {max_concurrency} > {slo.limits['tpot'] * 1e3:.0f} ms")
        if "ttft" in slo and ttft_s > slo.limits["ttft"]:
            reasons.append(f"TTFT {ttft_s * 1e3:.0f} ms > {slo.limits['ttft'] * 1e3:.0f} ms")
        candidates.append(Candidate(precision, row.fits, row.total, row.usable, alone.decode_tokens_per_s, per_stream,
                                    ttft_s, row.fits and len(reasons) == 0, reasons))
    return candidates


def choose(candidates: list[Candidate]) -> tuple[Candidate, str]:
    """(the candidate, why)."""
    for c in sorted(candidates, key=lambda c: ORDER.index(c.precision)):
        if c.meets_slo:
            return c, f"{c.precision}: the most accurate precision that fits and is predicted to meet the SLOs"
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        raise LmforgeError("no precision fits the device's memory: " +
                           "; ".join(f"{c.precision} {', '.join(c.reasons)}" for c in candidates))
    best = max(fitting, key=lambda c: c.stream_tokens_per_s_at_load)
    return best, f"{best.precision}: no precision is predicted to meet the SLOs; the fastest that fits"
