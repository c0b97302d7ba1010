"""What the commands share: the consoles, JSON output, and the flags several commands take."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from rich.console import Console

from lmforge.errors import LmforgeError

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

EXAMPLE_PROMPT = "What is the capital of France?"


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def emit(result, as_json: bool, printer, written: str | None = None) -> None:
    """A command's result: JSON on stdout, or `printer(out, result)` and where it was written."""
    if as_json:
        print_json(result)
        return
    printer(out, result)
    if written:
        out.print(f"wrote {written}")


def peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def ms(d: dict | None, key: str) -> str:
    return "-" if not d else f"{d[key] * 1e3:.0f}"


def read_text_arg(text: str | None, file: str | None) -> str:
    if file:
        try:
            return Path(file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LmforgeError(f"{file}: no such file") from None
        except UnicodeDecodeError:
            raise LmforgeError(f"{file}: not UTF-8 text") from None
    if text is None:
        raise LmforgeError("give a text or --file")
    return text


def float_list(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmforgeError(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise LmforgeError(f"--{name}: no numbers given")
    return values


def number_list(text: str, name: str, cast=float) -> list:
    """Positive comma-separated numbers (load levels)."""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LmforgeError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise LmforgeError(f"{name}: give positive numbers, e.g. 1,2,4")
    return values


# --- shared flags ------------------------------------------------------------------------------

def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32, or what a quantized model was made for)")


def add_model_arg(p: argparse.ArgumentParser) -> None:
    help_text = "model: 'smollm2-135m' (embedded, default), a GGUF file or a Hugging Face directory"
    p.add_argument("--model", "-m", default=None, help=help_text)
    add_dtype_arg(p)
    add_backend_arg(p)


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, choices=["torch", "onnxruntime"],
                   help="torch (default), or onnxruntime: runs an ONNX export folder, or exports MODEL once "
                        "into the cache and runs that")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=128, help="most new tokens (default 128)")
    g.add_argument("--min-tokens", type=int, default=0, help="suppress end-of-sequence before this many")
    g.add_argument("--temperature", "-t", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stop-token-id", type=int, action="append", default=[], help="stop token id (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")


def add_kv_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                   help="KV-cache storage: the model's dtype (auto), or INT8 with a scale per token and head")


def kv_dtype(args):
    import torch

    return None if args.kv_cache_dtype == "auto" else getattr(torch, args.kv_cache_dtype)


def sampling_params(args):
    from lmforge.sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, max_tokens=args.max_tokens,
        min_tokens=args.min_tokens, ignore_eos=args.ignore_eos, stop=tuple(args.stop),
        stop_token_ids=tuple(args.stop_token_id))


def load_model(args):
    from lmforge.api import load

    return load(args.model, args.dtype, backend=args.backend)
