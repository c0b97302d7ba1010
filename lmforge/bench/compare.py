"""The seed's quantization experiment: the same model at several precisions and methods, measured
on size, memory, speed, quality against float32, and the answers themselves.

A variant is a precision name (`lmforge.precision`): fp32, bf16, int8 (RTN per channel),
int8-asym, int4-rtn, int4-gptq, int4-awq, w8a8-sq (SmoothQuant), w8a8-rtn (W8A8 per tensor, no
smoothing), llm-int8. A path to a saved quantized folder works as a variant too.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge.api import load
from lmforge.bench.offline import measure_speed
from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate
from lmforge.precision import COMPARE_VARIANTS, precision
from lmforge.quant.workflow import weight_bytes, weights_file_bytes
from lmforge.sampling import SamplingParams
from lmforge.variants import build_quantized

DEFAULT_PROMPTS = ("What is the capital of France?", "Explain in one sentence why the sky is blue.")


@dataclass
class VariantResult:
    variant: str
    description: str
    file_bytes: int
    weight_bytes: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_s: float
    tpot_s: float
    perplexity: float | None = None
    delta_perplexity_pct: float | None = None
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    quantize_s: float = 0.0
    answers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise LmforgeError("--variants: give at least one variant")
    for name in names:
        if name not in COMPARE_VARIANTS and not Path(name).is_dir():
            raise LmforgeError(f"unknown variant {name!r}; choose from {', '.join(COMPARE_VARIANTS)} "
                               f"or a quantized folder")
    return names


def describe(name: str) -> str:
    if name not in COMPARE_VARIANTS:
        return f"saved model {name}"
    return precision(name).description


def build_variant(model, name: str, calibration_file, work_dir: Path):
    """(LoadedModel, file bytes, seconds spent quantizing) for one variant."""
    if name not in COMPARE_VARIANTS:  # a saved folder
        return load(name), weights_file_bytes(Path(name)), 0.0
    chosen = precision(name, COMPARE_VARIANTS)
    if not chosen.quantized:
        lm = load(model, chosen.dtype)
        return lm, lm.config.num_parameters * chosen.bits // 8, 0.0
    return build_quantized(model, chosen, calibration_file, work_dir, reload=False)


def answers(lm, prompts, max_tokens: int = 48) -> list[str]:
    engine = lm.engine(max_batch=len(prompts), max_seq_len=512)
    ids = [lm.tokenizer.apply_chat_template([{"role": "user", "content": p}]) if lm.tokenizer.has_chat_template
           else lm.tokenizer.encode(p) for p in prompts]
    return [c.text.strip() for c in engine.generate(ids, SamplingParams(temperature=0, max_tokens=max_tokens))]


def compare(model, variants: list[str], text_ids: list[int] | None, prompts=DEFAULT_PROMPTS,
            calibration_file=None, ctx: int = 512, stride: int = 256, keep_dir: Path | None = None,
            on_result=None, prompt_tokens: int = 256, decode_tokens: int = 64) -> list[VariantResult]:
    """Build, measure and score each variant; quality is judged against the float32 model."""
    reference = load(model, "float32") if text_ids is not None else None
    reference_ppl = evaluate(reference.model, text_ids, ctx, stride).perplexity if reference else None
    results = []
    with tempfile.TemporaryDirectory(prefix="lmforge-compare-") as scratch:
        work_dir = Path(keep_dir) if keep_dir else Path(scratch)
        for name in variants:
            lm, file_bytes, seconds = build_variant(model, name, calibration_file, work_dir)
            result = VariantResult(name, describe(name), file_bytes, weight_bytes(lm.model),
                                   **measure_speed(lm, prompt_tokens, decode_tokens), quantize_s=seconds)
            if reference is not None:
                scored = evaluate(lm.model, text_ids, ctx, stride, reference=reference.model)
                result.perplexity = scored.perplexity
                result.delta_perplexity_pct = 100 * (scored.perplexity / reference_ppl - 1)
                result.kl_divergence = scored.kl_divergence
                result.top1_agreement = scored.top1_agreement
            result.answers = answers(lm, list(prompts)) if prompts else []
            results.append(result)
            if on_result is not None:
                on_result(result)
            del lm
    return results


def write_outputs(results: list[VariantResult], out_dir: Path, title: str) -> dict[str, Path]:
    """compare.json and a PNG of quality (delta perplexity) against decode speed, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "compare.json", "plot": out_dir / "compare.png"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"title": title, "variants": [r.to_dict() for r in results]}, indent=2,
                              ensure_ascii=False))
    os.replace(tmp, paths["json"])

    fig, (speed_ax, size_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in results:
        quality = r.delta_perplexity_pct if r.delta_perplexity_pct is not None else math.nan
        speed_ax.scatter(r.decode_tokens_per_s, quality, s=60)
        speed_ax.annotate(r.variant, (r.decode_tokens_per_s, quality), textcoords="offset points", xytext=(5, 5))
        size_ax.scatter(r.weight_bytes / 1e6, quality, s=60)
        size_ax.annotate(r.variant, (r.weight_bytes / 1e6, quality), textcoords="offset points", xytext=(5, 5))
    speed_ax.set_xlabel("decode tokens/s (higher is better)")
    size_ax.set_xlabel("resident weight memory, MB (lower is better)")
    for ax in (speed_ax, size_ax):
        ax.set_ylabel("perplexity increase over float32, % (lower is better)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp_png = paths["plot"].with_suffix(".tmp.png")
    fig.savefig(tmp_png, dpi=110)
    plt.close(fig)
    os.replace(tmp_png, paths["plot"])
    return paths
