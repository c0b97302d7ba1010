"""`lmforge bench offline`: the engine's own speed on one model variant, without a server.

Prefill (TTFT of a long prompt), decode (TPOT after it), peak memory; next to what a device
profile predicts for the same model, precision and backend."""

from __future__ import annotations

import resource
from datetime import datetime, timezone

import torch

from lmforge.atomic import write_json
from lmforge.bench.serve_bench import machine
from lmforge.device.predict import PRECISIONS as PREDICTED_PRECISIONS
from lmforge.device.predict import predict, relative_error
from lmforge.device.profile import load_profile
from lmforge.errors import LmforgeError
from lmforge.precision import dtype_precision
from lmforge.progress import status
from lmforge.sampling import SamplingParams
from lmforge.variants import load_variant

KIND = "offline-bench"


def measure_speed(lm, prompt_tokens: int = 256, decode_tokens: int = 64, repeats: int = 3) -> dict:
    """Prefill and decode speed of the engine (greedy), medians after a warm-up run."""
    if prompt_tokens < 1 or decode_tokens < 2 or repeats < 1:
        raise ValueError("prompt tokens >= 1, decode tokens >= 2 and repeats >= 1")
    engine = lm.engine(max_batch=1, max_seq_len=prompt_tokens + decode_tokens + 8)
    prompt = torch.randint(100, lm.config.vocab_size - 100, (prompt_tokens,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(temperature=0, max_tokens=decode_tokens, ignore_eos=True)
    engine.generate([prompt], params)  # warm-up
    runs = sorted((engine.generate([prompt], params)[0] for _ in range(repeats)), key=lambda c: c.tpot_s)
    median = runs[len(runs) // 2]
    ttft = sorted(c.ttft_s for c in runs)[len(runs) // 2]
    return {"prefill_tokens_per_s": prompt_tokens / ttft, "ttft_s": ttft, "tpot_s": median.tpot_s,
            "decode_tokens_per_s": 1 / median.tpot_s}


def peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def variant_precision(lm) -> str:
    """fp32 / bf16 / int8 / int4 of a loaded model, as its backend runs it."""
    if lm.backend == "onnxruntime":
        return lm.precision or "fp32"
    if lm.checkpoint is not None and lm.checkpoint.quantization is not None:
        return f"int{lm.checkpoint.quantization.recipe.bits}"
    return dtype_precision(lm.model.dtype)  # its weights' (a bfloat16 model keeps float32 norms)


def run_offline_bench(lm, prompt_tokens: int = 512, decode_tokens: int = 128, repeats: int = 3,
                      profile=None, label: str | None = None, weight_bytes: int | None = None) -> dict:
    speed = measure_speed(lm, prompt_tokens, decode_tokens, repeats)
    precision = variant_precision(lm)
    result = {"kind": KIND, "label": label or f"{lm.name} {lm.backend} {precision}",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "model": lm.name, "backend": lm.backend, "precision": precision, "prompt_tokens": prompt_tokens,
              "decode_tokens": decode_tokens, "repeats": repeats, **speed,
              "peak_memory_bytes": peak_memory_bytes(), "weight_bytes": weight_bytes, "threads": torch.get_num_threads()}
    if profile is not None and precision in PREDICTED_PRECISIONS:
        # decode runs after the prompt: on average prompt + half the new tokens are in the cache
        p = predict(lm.config, profile, precision, lm.backend, context=prompt_tokens + decode_tokens // 2,
                    prefill_tokens=prompt_tokens)
        result["prediction"] = {"profile": profile.name, **p.to_dict(),
                                "decode_error": relative_error(p.decode_tokens_per_s, speed["decode_tokens_per_s"]),
                                "prefill_error": relative_error(p.prefill_tokens_per_s, speed["prefill_tokens_per_s"])}
    return result


def bench_variant(model, backend: str = "torch", precision: str = "fp32", prompt_tokens: int = 512,
                  decode_tokens: int = 128, repeats: int = 3, device: str | None = None, label: str | None = None,
                  out: str | None = None, show_progress: bool = True) -> dict:
    """Load one variant (see `variants.load_variant`), measure it, write the result to `out`.

    `lmforge bench offline`, and deploy in a process of its own (`isolated.call`): peak memory is
    the process's."""
    if prompt_tokens < 1 or decode_tokens < 2 or repeats < 1:
        raise LmforgeError("--prompt-tokens >= 1, --decode-tokens >= 2 and --repeats >= 1")
    profile = load_profile(device) if device else None
    with status(f"loading {model or 'smollm2-135m'} ({backend} {precision})", show_progress):
        lm, weights = load_variant(model, backend, precision)
    with status("measuring prefill and decode", show_progress):
        result = run_offline_bench(lm, prompt_tokens, decode_tokens, repeats, profile, label, weights)
    if out:
        write_json(out, result)
    return result
