"""The `lmforge` command: parses arguments, calls the library, prints tables or JSON."""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmforge.errors import LmforgeError

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

EXAMPLE_PROMPT = "What is the capital of France?"


# --- helpers -----------------------------------------------------------------------------------

def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _read_text_arg(text: str | None, file: str | None) -> str:
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


def _add_model_arg(p: argparse.ArgumentParser, optional_positional: bool = False) -> None:
    help_text = "model: 'smollm2-135m' (embedded, default), a GGUF file or a Hugging Face directory"
    if optional_positional:
        p.add_argument("model", nargs="?", default=None, help=help_text)
    else:
        p.add_argument("--model", "-m", default=None, help=help_text)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32, or what a quantized model was made for)")
    _add_backend_arg(p)


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, choices=["torch", "onnxruntime"],
                   help="torch (default), or onnxruntime: runs an ONNX export folder, or exports MODEL once "
                        "into the cache and runs that")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
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


def _add_kv_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"],
                   help="KV-cache storage: the model's dtype (auto), or INT8 with a scale per token and head")


def _kv_dtype(args):
    import torch

    return None if args.kv_cache_dtype == "auto" else getattr(torch, args.kv_cache_dtype)


def _sampling_params(args):
    from lmforge.sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, max_tokens=args.max_tokens,
        min_tokens=args.min_tokens, ignore_eos=args.ignore_eos, stop=tuple(args.stop),
        stop_token_ids=tuple(args.stop_token_id))


def _load(args):
    import lmforge

    return lmforge.load(args.model, args.dtype, backend=args.backend)


def _stats_line(c, peak: int) -> str:
    return (f"[dim]{c.prompt_tokens} prompt + {c.completion_tokens} new tokens · TTFT {c.ttft_s * 1e3:.0f} ms · "
            f"TPOT {c.tpot_s * 1e3:.1f} ms · {c.tokens_per_s:.1f} tokens/s · finish: {c.finish_reason} · "
            f"peak memory {peak / 1e6:.0f} MB[/dim]")


def _completion_json(c, peak: int) -> dict:
    return {"text": c.text, "token_ids": c.token_ids, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
            "ttft_s": c.ttft_s, "tpot_s": c.tpot_s, "tokens_per_s": c.tokens_per_s,
            "peak_memory_bytes": peak}


def _stream_to_stdout(engine, prompt, params):
    completion = None
    for output in engine.stream(prompt, params):
        sys.stdout.write(output.delta_text)
        sys.stdout.flush()
        completion = output.completion
    sys.stdout.write("\n")
    return completion


# --- generate ----------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from lmforge.sampling import SamplingParams

    base = _sampling_params(args)
    variants = [SamplingParams.parse(spec, base) for spec in args.compare] if args.compare else [base]
    lm = _load(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
        prompt = lm.tokenizer.apply_chat_template(messages)
    else:
        prompt = lm.tokenizer.encode(args.prompt)
    longest = max(v.max_tokens for v in variants)
    engine = lm.engine(max_batch=len(variants), max_seq_len=min(lm.config.max_position_embeddings,
                                                                len(prompt) + longest + 1), kv_dtype=_kv_dtype(args))
    for v in variants:
        engine.check_fits(len(prompt), v)

    if args.compare:
        completions = engine.generate([prompt] * len(variants), variants, use_cache=not args.no_cache)
        peak = _peak_memory_bytes()
        if args.json:
            _print_json([{"settings": spec, **_completion_json(c, peak)} for spec, c in zip(args.compare, completions)])
            return 0
        table = Table(title="Same prompt, different sampling settings", show_lines=True)
        for col in ("settings", "answer", "tokens", "finish"):
            table.add_column(col)
        for spec, c in zip(args.compare, completions):
            table.add_row(spec, c.text, str(c.completion_tokens), c.finish_reason)
        out.print(table)
        return 0

    if args.stream and not args.no_cache and not args.json:
        completion = _stream_to_stdout(engine, prompt, base)
    else:
        completion = engine.generate([prompt], base, use_cache=not args.no_cache)[0]
        if not args.json:
            out.print(completion.text, markup=False)
    peak = _peak_memory_bytes()
    if args.json:
        _print_json(_completion_json(completion, peak))
    else:
        err.print(_stats_line(completion, peak))
    return 0


# --- chat --------------------------------------------------------------------------------------

def trim_history(tokenizer, system: list[dict], history: list[dict], window: int, reserve: int):
    """Drop the oldest turns until the templated conversation plus `reserve` fits the window.

    Returns (prompt ids, history kept, turns dropped)."""
    dropped = 0
    while True:
        ids = tokenizer.apply_chat_template(system + history)
        if len(ids) + reserve <= window or len(history) <= 1:
            return ids, history, dropped
        # A turn is a user message and the answer after it.
        cut = 2 if len(history) > 2 and history[1]["role"] == "assistant" else 1
        history = history[cut:]
        dropped += cut


def cmd_chat(args) -> int:
    lm = _load(args)
    params = _sampling_params(args)
    window = min(args.context or lm.config.max_position_embeddings, lm.config.max_position_embeddings)
    engine = lm.engine(max_batch=1, max_seq_len=window, kv_dtype=_kv_dtype(args))
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"[bold]{lm.name}[/bold] chat · context {window} tokens · /reset clears, /exit or Ctrl-D quits")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            err.print("[dim](history cleared)[/dim]")
            continue
        history.append({"role": "user", "content": text})
        prompt, history, dropped = trim_history(lm.tokenizer, system, history, window, params.max_tokens)
        if dropped:
            err.print(f"[yellow](context window of {window} tokens is full: dropped the {dropped} oldest "
                      f"message{'s' if dropped > 1 else ''})[/yellow]")
        if len(prompt) + params.max_tokens > window:
            err.print(f"[red]this message alone ({len(prompt)} tokens) plus --max-tokens {params.max_tokens} "
                      f"does not fit the {window}-token window[/red]")
            history.pop()
            continue
        sys.stdout.write("assistant> " if interactive else "")
        completion = _stream_to_stdout(engine, prompt, params)
        history.append({"role": "assistant", "content": completion.text})
        err.print(_stats_line(completion, _peak_memory_bytes()))
    return 0


# --- inspect / plan ----------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    from lmforge.inspection import inspect_model
    from lmforge.onnx.export import MODEL_FILE, is_onnx_export, is_onnx_file, read_manifest
    from lmforge.plan import format_bytes

    if is_onnx_file(args.model) or is_onnx_export(args.model):
        folder = Path(args.model)
        manifest = read_manifest(folder) if is_onnx_export(folder) else None
        return _inspect_onnx(folder / MODEL_FILE if manifest else folder, manifest, args)
    if args.netron:
        raise LmforgeError("--netron opens ONNX files; give a .onnx file or an export folder")
    report = inspect_model(args.model)
    if args.json:
        _print_json(report.to_dict())
        return 0
    c = report.config
    table = Table(title=f"{report.name} ({c.architecture})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("source", report.source)
    table.add_row("layers / hidden / intermediate", f"{c.num_layers} / {c.hidden_size} / {c.intermediate_size}")
    attention = "MHA" if c.num_kv_heads == c.num_heads else ("MQA" if c.num_kv_heads == 1 else "GQA")
    table.add_row("attention heads", f"{c.num_heads} query, {c.num_kv_heads} key/value ({attention}), "
                                     f"head dim {c.head_dim}")
    table.add_row("vocabulary", f"{c.vocab_size}" + (" (tied input/output embeddings)" if c.tie_word_embeddings else ""))
    table.add_row("context length", f"{c.max_position_embeddings} tokens")
    table.add_row("rope", f"theta {c.rope_theta:g}" + (f", scaling {c.rope_scaling_dict}" if c.rope_scaling else ""))
    table.add_row("parameters", f"{_fmt_params(report.parameters)} ({report.parameters:,})")
    if report.parameters_in_weights is not None:
        table.add_row("parameters in weight files", f"{report.parameters_in_weights:,}")
    if report.file_bytes:
        table.add_row("file size", format_bytes(report.file_bytes))
    if report.storage_types:
        table.add_row("stored as", ", ".join(f"{k} x{v}" for k, v in sorted(report.storage_types.items())))
    if report.quantization:
        table.add_row("quantization", report.quantization)
    out.print(table)

    parts = Table(title="Parameters by component")
    for col in ("component", "parameters", "share"):
        parts.add_column(col, justify="right" if col != "component" else "left")
    for name, n in report.parameters_by_component.items():
        parts.add_row(name, f"{n:,}", f"{100 * n / report.parameters:.1f} %")
    out.print(parts)

    mem = Table(title="Weight memory by precision")
    mem.add_column("precision")
    mem.add_column("bytes/param", justify="right")
    mem.add_column("weights", justify="right")
    from lmforge.plan import WEIGHT_BYTES
    for p, b in report.memory_by_precision().items():
        mem.add_row(p, f"{WEIGHT_BYTES[p]:.3g}", format_bytes(b))
    out.print(mem)

    kv = Table(title="KV cache per token: 2 x layers x kv_heads x head_dim x bytes")
    kv.add_column("cache dtype")
    kv.add_column("per token", justify="right")
    kv.add_column("per 1000 tokens", justify="right")
    kv.add_column(f"full context ({c.max_position_embeddings})", justify="right")
    for p, b in report.kv_bytes_per_token().items():
        kv.add_row(p, format_bytes(b), format_bytes(b * 1000), format_bytes(b * c.max_position_embeddings))
    out.print(kv)
    naive = 2 * c.hidden_size * c.num_layers * 2
    if c.num_kv_heads != c.num_heads:
        out.print(f"[dim]The formula 2 x hidden x layers x 2 bytes ignores {attention} and would say "
                  f"{format_bytes(naive)} per token, {naive / report.kv_bytes_per_token()['fp16']:.0f}x too much.[/dim]")
    return 0


def _inspect_onnx(path: Path, manifest: dict | None, args) -> int:
    from lmforge.onnx.inspect import inspect_onnx, serve_netron
    from lmforge.plan import format_bytes

    report = inspect_onnx(path)
    report.manifest = manifest
    if args.json:
        _print_json(report.to_dict())
    else:
        table = Table(title=f"{path}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        if manifest:
            table.add_row("lmforge export", f"{manifest.get('name')} at {manifest.get('precision')}, "
                                            f"from {manifest.get('source')}")
        table.add_row("ir version / producer", f"{report.ir_version} / {report.producer or '-'}")
        table.add_row("opsets", ", ".join(f"{d} {v}" for d, v in report.opsets.items()))
        table.add_row("graph file / external data", f"{format_bytes(report.file_bytes)} / "
                                                    f"{format_bytes(report.external_data_bytes)}")
        table.add_row("initializers", f"{report.initializer_count}: " + ", ".join(
            f"{dtype} {format_bytes(b)}" for dtype, b in report.initializer_bytes.items()))
        table.add_row("decoder with KV cache", "yes" if report.is_decoder else "no")
        out.print(table)
        for title, tensors in (("Inputs", report.inputs), ("Outputs", report.outputs)):
            shown = tensors if len(tensors) <= 12 else tensors[:6] + tensors[-4:]
            t = Table(title=f"{title} ({len(tensors)})")
            for col in ("name", "dtype", "shape"):
                t.add_column(col)
            for info in shown:
                t.add_row(info.name, info.dtype, escape("[" + ", ".join(map(str, info.shape)) + "]"))
            if len(shown) < len(tensors):
                t.caption = f"{len(tensors) - len(shown)} more (per-layer KV cache), see --json"
            out.print(t)
        ops = Table(title="Operators")
        ops.add_column("operator")
        ops.add_column("count", justify="right")
        for op, n in report.operators.items():
            ops.add_row(op, str(n))
        out.print(ops)
    if args.netron:
        serve_netron(path)
    return 0


def cmd_export(args) -> int:
    from lmforge.onnx.export import export_onnx
    from lmforge.onnx.inspect import inspect_onnx
    from lmforge.plan import format_bytes

    folder = export_onnx(args.model, args.out, args.precision, args.opset, args.group_size, args.accuracy_level)
    report = inspect_onnx(folder / "model.onnx")
    summary = {"out": str(folder), "operators": report.operators, "initializer_bytes": report.initializer_bytes,
               "external_data_bytes": report.external_data_bytes}
    if args.json:
        _print_json(summary)
        return 0
    ops = ", ".join(f"{op} x{n}" for op, n in list(report.operators.items())[:6])
    err.print(f"wrote {folder} ({format_bytes(report.external_data_bytes)} of weights); {ops}")
    err.print(f"run it: lmforge generate --model {folder} \"{EXAMPLE_PROMPT}\" --chat")
    return 0


def cmd_serve(args) -> int:
    import logging

    import uvicorn

    from lmforge.serve.app import ServerSettings, create_app
    from lmforge.serve.limits import parse_rate

    try:
        rate = parse_rate(args.rate_limit)
    except ValueError as e:
        raise LmforgeError(str(e)) from None
    for name in ("max_batch", "max_queue", "prefill_chunk", "port"):
        if getattr(args, name) < (0 if name == "port" else 1):
            raise LmforgeError(f"--{name.replace('_', '-')} must be positive")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise LmforgeError("--max-seq-len must be at least 2")
    settings = ServerSettings(model=args.model, backend=args.backend, dtype=args.dtype,
                              served_model_name=args.served_model_name,
                              max_batch=args.max_batch, max_queue=args.max_queue, max_seq_len=args.max_seq_len,
                              prefill_chunk=args.prefill_chunk,
                              api_keys=list(args.api_key), rate_limit=rate, request_timeout=args.request_timeout,
                              degrade_max_tokens=args.degrade_max_tokens, cache_size=args.cache_size,
                              drain_timeout=args.drain_timeout)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    err.print(f"lmforge serve: loading {args.model or 'smollm2-135m'}; listening on http://{args.host}:{args.port} "
              f"(GET /health is 200 once the model is ready)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout)
    return 0


def cmd_plan(args) -> int:
    from lmforge.loading import load_config
    from lmforge.plan import context_budget, format_bytes, parse_bytes, plan_fit

    config, name = load_config(args.model)
    device = parse_bytes(args.device_memory)
    context = args.context or config.max_position_embeddings
    rows = plan_fit(config, device, context, args.batch, args.kv_dtype, args.max_utilization)
    budget = None
    if any(v is not None for v in (args.prompt, args.history, args.retrieval)):
        budget = context_budget(config.max_position_embeddings if not args.context else args.context,
                                prompt=args.prompt or 0, history=args.history or 0,
                                retrieval=args.retrieval or 0, output=args.output)
    if args.json:
        data = {"model": name, "parameters": config.num_parameters, "device_memory_bytes": device,
                "context": context, "batch": args.batch, "kv_dtype": args.kv_dtype,
                "max_utilization": args.max_utilization,
                "precisions": [{"precision": r.precision, "weights_bytes": r.weights, "kv_cache_bytes": r.kv_cache,
                                "activation_bytes": r.activations, "total_bytes": r.total,
                                "usable_bytes": r.usable, "fits": r.fits} for r in rows]}
        if budget:
            data["context_budget"] = {"window": budget.window, "parts": budget.parts, "used": budget.used,
                                      "remaining": budget.remaining, "fits": budget.fits}
        _print_json(data)
        return 0
    table = Table(title=f"{name} ({_fmt_params(config.num_parameters)} parameters) on a "
                        f"{format_bytes(device)} device · context {context} · batch {args.batch} · "
                        f"KV cache {args.kv_dtype} · at most {args.max_utilization:.0%} used")
    for col in ("precision", "weights", "KV cache", "activations", "total", "of device", "headroom", "fits"):
        table.add_column(col, justify="left" if col == "precision" else "right")
    for r in rows:
        table.add_row(r.precision, format_bytes(r.weights), format_bytes(r.kv_cache), format_bytes(r.activations),
                      format_bytes(r.total), f"{100 * r.total / device:.0f} %", format_bytes(r.headroom),
                      "[green]yes[/green]" if r.fits else "[red]no[/red]")
    out.print(table)
    best = next((r.precision for r in rows if r.fits), None)
    out.print(f"Highest precision that fits: [bold]{best}[/bold]" if best else
              "[red]No precision fits: shorten the context, lower the batch or pick a larger device.[/red]")
    if budget:
        b = Table(title=f"Context budget against a {budget.window}-token window")
        b.add_column("part")
        b.add_column("tokens", justify="right")
        for part, n in budget.parts.items():
            b.add_row(part, str(n))
        b.add_row("[bold]total[/bold]", f"[bold]{budget.used}[/bold]")
        b.add_row("remaining", str(budget.remaining))
        out.print(b)
        out.print(f"{' + '.join(str(v) for v in budget.parts.values())} = {budget.used} "
                  f"{'<=' if budget.fits else '>'} {budget.window}: "
                  + ("[green]fits[/green]" if budget.fits else
                     f"[red]does not fit; cut {-budget.remaining} tokens (oldest history or retrieved text first)[/red]"))
    return 0


# --- tokenize / sampling / formats -------------------------------------------------------------

def cmd_tokenize(args) -> int:
    from lmforge.loading import load_checkpoint
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenstats import token_stats

    texts = [_read_text_arg(None, f) for f in args.file] + list(args.text)
    if not texts:
        raise LmforgeError("give one or more texts, or --file")
    checkpoint = load_checkpoint(args.model)
    tokenizer = Tokenizer.from_dir(checkpoint.tokenizer_dir)
    stats = [token_stats(tokenizer, t) for t in texts]
    if args.json:
        _print_json([{"text": s.text if len(s.text) <= 200 else s.text[:200] + "...",
                      **s.to_dict(include_ids=not args.summary)} for s in stats])
        return 0
    if not args.summary:
        for s in stats:
            if s.count <= args.show:
                shown = " | ".join(repr(t)[1:-1] for t in s.tokens)
                out.print(f"[bold]{escape(repr(s.text[:60]))}[/bold]\n  ids: {s.ids}\n  tokens: {escape(shown)}")
    table = Table(title="Token cost")
    for col in ("text", "characters", "words", "tokens", "chars/token", "tokens/char", "tokens/word"):
        table.add_column(col, justify="left" if col == "text" else "right")
    for s in stats:
        label = s.text.replace("\n", " ")
        table.add_row(label[:40] + ("..." if len(label) > 40 else ""), str(s.characters), str(s.words),
                      str(s.count), f"{s.chars_per_token:.2f}", f"{s.tokens_per_char:.2f}", f"{s.tokens_per_word:.2f}")
    out.print(table)
    if len(stats) > 1:
        lo, hi = min(stats, key=lambda s: s.tokens_per_char), max(stats, key=lambda s: s.tokens_per_char)
        if lo.tokens_per_char > 0:
            out.print(f"[dim]Per character, {hi.text[:20]!r}... costs {hi.tokens_per_char / lo.tokens_per_char:.1f}x "
                      f"the tokens of {lo.text[:20]!r}...: a byte-level BPE vocabulary learnt mostly from English "
                      f"splits characters it saw rarely into several byte tokens, and price, latency and context "
                      f"use all scale with tokens.[/dim]")
    return 0


def _float_list(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmforgeError(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise LmforgeError(f"--{name}: no numbers given")
    return values


def cmd_sampling(args) -> int:
    import torch

    from lmforge.sampling import probabilities

    logits = torch.tensor(_float_list(args.logits, "logits"), dtype=torch.float64)
    temperatures = _float_list(args.temperature, "temperature")
    if any(t < 0 for t in temperatures):
        raise LmforgeError("--temperature values must be >= 0")
    if not 0 < args.top_p <= 1 or args.top_k < 0 or not 0 <= args.min_p <= 1:
        raise LmforgeError("--top-p must be in (0, 1], --top-k >= 0, --min-p in [0, 1]")
    rows = [(t, probabilities(logits, t, args.top_k, args.top_p, args.min_p).tolist()) for t in temperatures]
    if args.json:
        _print_json({"logits": logits.tolist(), "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
                     "rows": [{"temperature": t, "probabilities": p} for t, p in rows]})
        return 0
    filters = ", ".join(f for f in (f"top-k {args.top_k}" if args.top_k else "",
                                    f"top-p {args.top_p}" if args.top_p < 1 else "",
                                    f"min-p {args.min_p}" if args.min_p else "") if f) or "no filter"
    table = Table(title=f"softmax(logits / T), {filters}")
    table.add_column("T")
    for i, v in enumerate(logits.tolist()):
        table.add_column(f"token {i} (logit {v:g})", justify="right")
    for t, probs in rows:
        table.add_row(f"{t:g}" + (" (greedy)" if t == 0 else ""), *(f"{p:.6f}" for p in probs))
    out.print(table)
    return 0


def cmd_formats(args) -> int:
    from lmforge.formats import bit_pattern, number_formats, stored_value
    from lmforge.plan import format_bytes

    formats = number_formats()
    if args.json:
        _print_json({"formats": [vars(f) | {"bytes": f.bytes, "example_bits": bit_pattern(args.value, f.name),
                                            "example_stored": stored_value(args.value, f.name)} for f in formats],
                     "example_value": args.value,
                     "model_bytes": {f.name: args.params * f.bytes for f in formats} if args.params else None})
        return 0
    table = Table(title="Number formats")
    for col in ("format", "bits", "sign/exp/mantissa", "max", "smallest normal", "epsilon", "~decimal digits"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for f in formats:
        layout = f"{f.sign_bits}/{f.exponent_bits}/{f.mantissa_bits}" if f.exponent_bits else "two's complement"
        table.add_row(f.name, str(f.bits), layout, f"{f.max_value:.6g}",
                      f"{f.smallest_normal:.3g}" if f.smallest_normal else "-",
                      f"{f.epsilon:.3g}", f"{f.decimal_digits:.0f}" if f.decimal_digits else "-")
    out.print(table)
    ex = Table(title=f"{args.value!r} stored in each format")
    for col in ("format", "bits", "value stored", "error"):
        ex.add_column(col)
    for f in formats:
        stored = stored_value(args.value, f.name)
        ex.add_row(f.name, bit_pattern(args.value, f.name), f"{stored:.8g}", f"{abs(stored - args.value):.3g}")
    out.print(ex)
    if args.params:
        mem = Table(title=f"A model of {_fmt_params(int(args.params))} parameters")
        mem.add_column("format")
        mem.add_column("weights", justify="right")
        for f in formats:
            mem.add_row(f.name, format_bytes(args.params * f.bytes))
        out.print(mem)
    return 0


# --- eval ------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    import lmforge
    from lmforge.evaluate import evaluate

    text = _read_text_arg(None, args.text)
    if args.max_text_tokens is not None and args.max_text_tokens < 2:
        raise LmforgeError("--max-text-tokens must be at least 2")
    lm = _load(args)
    ids = lm.tokenizer.encode(text, add_special_tokens=False)[: args.max_text_tokens]
    reference = None
    if args.reference is not None or args.reference_dtype is not None:
        reference = lmforge.load(args.reference if args.reference is not None else args.model,
                                 args.reference_dtype or "float32").model
    result = evaluate(lm.model, ids, ctx=args.ctx, stride=args.stride, reference=reference)
    dtype_name = str(lm.model.dtype).removeprefix("torch.")
    if args.json:
        _print_json({"model": lm.name, "dtype": dtype_name, "text": args.text, "ctx": args.ctx,
                     "stride": args.stride, **result.to_dict()})
        return 0
    table = Table(title=f"{lm.name} ({dtype_name}) on {Path(args.text).name}: {result.tokens_scored} tokens "
                        f"scored, window {args.ctx}, stride {args.stride}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("perplexity", f"{result.perplexity:.4f}")
    table.add_row("mean NLL (nats/token)", f"{result.mean_nll:.5f}")
    if reference is not None:
        table.add_row("reference perplexity", f"{result.reference_perplexity:.4f}")
        delta = 100 * (result.perplexity / result.reference_perplexity - 1)
        table.add_row("delta perplexity", f"{delta:+.3f} %")
        table.add_row("KL(reference || model)", f"{result.kl_divergence:.6f}")
        table.add_row("top-1 agreement", f"{100 * result.top1_agreement:.2f} %")
    out.print(table)
    return 0


# --- quantize ----------------------------------------------------------------------------------

def recipe_from_args(args):
    from lmforge.quant.recipe import QuantRecipe

    granularity = args.granularity
    if granularity is None:  # 4-bit and AWQ default to groups of 128, W8A8 to per channel
        grouped = args.group_size is not None or args.bits == 4 or args.method == "awq"
        granularity = "group" if grouped and args.method not in ("llm-int8", "smoothquant") else "channel"
    return QuantRecipe(method=args.method, bits=args.bits, granularity=granularity,
                       group_size=args.group_size or 128, symmetric=not args.asym,
                       head_bits={"float": None, "int8": 8, "int4": 4}[args.head], activations=args.activations,
                       outlier_threshold=args.threshold, damp=args.damp, desc_act=args.desc_act,
                       awq_grid=args.awq_grid, alpha=args.alpha, calibration_samples=args.calib_samples,
                       calibration_tokens=args.calib_tokens)


def cmd_quantize(args) -> int:
    from lmforge.plan import format_bytes
    from lmforge.quant.workflow import quantize_to_folder, weight_bytes, weights_file_bytes

    recipe = recipe_from_args(args)
    lm, report, folder = quantize_to_folder(args.model, recipe, args.out, args.calib)
    file_bytes = weights_file_bytes(folder)
    resident = weight_bytes(lm.model)
    if args.json:
        _print_json({"out": str(folder), "file_bytes": file_bytes, "weight_bytes": resident,
                     "float32_weight_bytes": report.float32_weight_bytes, **report.to_dict()})
        return 0
    table = Table(title=f"{lm.name}: {recipe.method}, {recipe.bits}-bit "
                        f"{'symmetric' if recipe.symmetric else 'asymmetric'} per {recipe.granularity}"
                        + (f" {recipe.group_size}" if recipe.granularity == "group" else ""))
    for col in ("layer", "shape", "MSE", "max abs error", "SQNR dB", "note"):
        table.add_column(col, justify="left" if col in ("layer", "note") else "right")
    for layer in report.layers:
        table.add_row(layer.name, "x".join(map(str, layer.shape)), f"{layer.mse:.3g}", f"{layer.max_abs:.3g}",
                      f"{layer.sqnr_db:.1f}", layer.note)
    out.print(table)
    out.print(f"Saved to [bold]{escape(str(folder))}[/bold]: weights file {format_bytes(file_bytes)}; resident "
              f"weights {format_bytes(resident)} = {resident / report.float32_weight_bytes:.2f}x float32 "
              f"({format_bytes(report.float32_weight_bytes)}).")
    return 0


def cmd_compare(args) -> int:
    from lmforge.plan import format_bytes
    from lmforge.quant.compare import DEFAULT_PROMPTS, compare, parse_variants, write_outputs

    variants = parse_variants(args.variants)
    prompts = tuple(args.prompt or DEFAULT_PROMPTS)
    text_ids = None
    if args.text:
        text = _read_text_arg(None, args.text)
        from lmforge.loading import load_checkpoint
        from lmforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(load_checkpoint(args.model).tokenizer_dir)
        text_ids = tokenizer.encode(text, add_special_tokens=False)[: args.max_text_tokens]
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None and args.keep_models and (out_dir / "models").exists():
        raise LmforgeError(f"{out_dir / 'models'}: exists; choose a new --out to keep the models")

    def progress(r):
        err.print(f"[dim]{r.variant}: decode {r.decode_tokens_per_s:.1f} tokens/s"
                  + (f", perplexity {r.perplexity:.3f}" if r.perplexity is not None else "") + "[/dim]")

    results = compare(args.model, variants, text_ids, prompts, args.calib, args.ctx, args.stride,
                      out_dir / "models" if out_dir is not None and args.keep_models else None, progress,
                      args.prompt_tokens, args.decode_tokens)
    title = f"{args.model or 'smollm2-135m'}: quantization variants"
    paths = write_outputs(results, out_dir, title) if out_dir is not None else {}
    if args.json:
        _print_json({"variants": [r.to_dict() for r in results], **{k: str(v) for k, v in paths.items()}})
        return 0
    table = Table(title=title)
    cols = ("variant", "file", "resident", "prefill tok/s", "decode tok/s", "TTFT ms", "TPOT ms", "perplexity",
            "delta ppl", "KL", "top-1")
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in results:
        quality = ("-", "-", "-", "-") if r.perplexity is None else (
            f"{r.perplexity:.3f}", f"{r.delta_perplexity_pct:+.2f} %", f"{r.kl_divergence:.4f}",
            f"{100 * r.top1_agreement:.1f} %")
        table.add_row(f"{r.variant} [dim]({r.description})[/dim]", format_bytes(r.file_bytes),
                      format_bytes(r.weight_bytes), f"{r.prefill_tokens_per_s:.0f}", f"{r.decode_tokens_per_s:.1f}",
                      f"{r.ttft_s * 1e3:.0f}", f"{r.tpot_s * 1e3:.1f}", *quality)
    out.print(table)
    if prompts:
        answers = Table(title="Answers (greedy)", show_lines=True)
        answers.add_column("variant")
        for p in prompts:
            answers.add_column(p)
        for r in results:
            answers.add_row(r.variant, *r.answers)
        out.print(answers)
    for kind, path in paths.items():
        out.print(f"wrote {kind}: {escape(str(path))}")
    return 0


# --- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="From a language-model checkpoint to a "
                                     "measured deployment on CPUs and memory-limited chips.")
    from lmforge import __version__
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt (or answer it with --chat)")
    p.add_argument("prompt")
    _add_model_arg(p)
    _add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence per token (no KV cache)")
    _add_kv_cache_arg(p)
    p.add_argument("--compare", nargs="+", metavar="SETTINGS",
                   help="run the prompt under several settings, e.g. 'temperature=0.1' 'temperature=1.0,top_p=0.9'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="multi-turn chat on stdin (oldest turns drop when the window is full)")
    _add_model_arg(p)
    _add_sampling_args(p)
    p.add_argument("--system", default=None)
    p.add_argument("--context", type=int, default=None, help="context window to use (default: the model's)")
    _add_kv_cache_arg(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="perplexity on a text; KL and top-1 agreement against a reference")
    p.add_argument("model", nargs="?", default=None, help="model to evaluate (default: the embedded one)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32, or what a quantized model was made for)")
    _add_backend_arg(p)
    p.add_argument("--text", required=True, help="UTF-8 text file to score")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (512)")
    p.add_argument("--stride", type=int, default=256, help="window step in tokens (256)")
    p.add_argument("--max-text-tokens", type=int, default=None, help="score only the first N tokens of the text")
    p.add_argument("--reference", default=None, help="reference model for KL / top-1 (default: the same model)")
    p.add_argument("--reference-dtype", default=None, choices=["float32", "bfloat16"],
                   help="reference dtype (default float32); giving it alone compares dtypes of one model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a model (rtn, llm-int8, gptq, awq, smoothquant) and save it")
    p.add_argument("model", nargs="?", default=None, help="model to quantize (default: the embedded one)")
    p.add_argument("--method", required=True, help="rtn, llm-int8, gptq, awq or smoothquant")
    p.add_argument("--bits", type=int, default=8, help="weight bits: 8 or 4 (default 8)")
    p.add_argument("--group-size", type=int, default=None,
                   help="input columns per scale (32, 64, 128, 256); default: 128 for 4-bit, per channel for 8-bit")
    p.add_argument("--granularity", choices=["tensor", "channel", "group"], default=None,
                   help="weight scales per tensor, per output channel or per group")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", action="store_true", help="symmetric weights (default)")
    sym.add_argument("--asym", action="store_true", help="asymmetric weights (scale and zero point)")
    p.add_argument("--activations", choices=["token", "tensor"], default=None,
                   help="also quantize activations to INT8 at run time (W8A8), per token or per tensor")
    p.add_argument("--head", choices=["int8", "int4", "float"], default="int8",
                   help="output layer (and tied embedding): INT8 per channel (default), INT4 in groups of 128, "
                        "or kept in float")
    p.add_argument("--calib", default=None, help="calibration text file (default: the text lmforge ships)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences (32)")
    p.add_argument("--calib-tokens", type=int, default=512, help="tokens per calibration sequence (512)")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: Hessian damping (0.01)")
    p.add_argument("--no-desc-act", dest="desc_act", action="store_false",
                   help="gptq: quantize columns in their natural order instead of act-order")
    p.add_argument("--awq-grid", type=int, default=20, help="awq: scale-exponent grid points (20)")
    p.add_argument("--alpha", type=float, default=0.5, help="smoothquant: migration strength (0.5)")
    p.add_argument("--threshold", type=float, default=6.0, help="llm-int8: outlier threshold (6.0)")
    p.add_argument("--out", required=True, help="new folder for the quantized model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("compare", help="the same model at several precisions: size, memory, speed, quality, answers")
    p.add_argument("model", nargs="?", default=None, help="model (default: the embedded one)")
    p.add_argument("--variants", default="fp32,bf16,int8,int4-rtn,int4-gptq,int4-awq,w8a8-sq",
                   help="comma-separated: fp32, bf16, int8, int8-asym, int4-rtn, int4-gptq, int4-awq, w8a8-sq, "
                        "w8a8-rtn, llm-int8, or quantized folders")
    p.add_argument("--text", default=None, help="UTF-8 text to score perplexity, KL and top-1 on")
    p.add_argument("--max-text-tokens", type=int, default=4096, help="score the first N tokens (4096)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt every variant answers (repeatable; default: two short questions)")
    p.add_argument("--calib", default=None, help="calibration text for gptq/awq/smoothquant")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt length for the speed test (256)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens decoded in the speed test (64)")
    p.add_argument("--out", default=None, help="folder for compare.json and compare.png")
    p.add_argument("--keep-models", action="store_true", help="also keep each quantized model under OUT/models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("inspect", help="architecture, parameters, memory per precision, KV cache per token")
    p.add_argument("model", nargs="?", default=None,
                   help="model, config.json, catalogue name (see `lmforge plan --list`), .onnx file or ONNX export")
    p.add_argument("--netron", action="store_true", help="also serve the ONNX file in Netron (pip install netron)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("serve", help="HTTP server: POST /generate and the OpenAI API, with continuous batching")
    p.add_argument("model", nargs="?", default=None, help="model to serve (default: the embedded one)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: float32 or a quantized model's own); bfloat16 batches far better "
                        "on CPUs with AMX/AVX-512 BF16")
    _add_backend_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="model id clients use (default: the model's name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV-cache slots, 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (64)")
    p.add_argument("--max-seq-len", type=int, default=None, help="context per sequence (default: the model's)")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled per step, in total (256): bounds the stall of running streams")
    p.add_argument("--api-key", action="extend", nargs="+", default=[], metavar="KEY",
                   help="accepted API keys (--api-key K1 K2, or repeated; none: open)")
    p.add_argument("--rate-limit", default=None, help="requests per API key (or client), e.g. 60/min")
    p.add_argument("--request-timeout", type=float, default=600, help="seconds before a request is aborted (600)")
    p.add_argument("--degrade-max-tokens", type=int, default=256,
                   help="when the queue is half full, cap new requests' max_tokens at this (256)")
    p.add_argument("--cache-size", type=int, default=256, help="deterministic answers kept for reuse (256; 0 off)")
    p.add_argument("--drain-timeout", type=float, default=30, help="seconds to finish requests on SIGTERM (30)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a model to ONNX (a folder that runs on its own with ONNX Runtime)")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser("onnx", help="decoder with KV cache, fused attention/norms, MatMulNBits for INT4/INT8")
    p.add_argument("model", nargs="?", default=None, help="model to export (default: the embedded one)")
    p.add_argument("--out", required=True, help="new folder for model.onnx, its weights, tokenizer and manifest")
    p.add_argument("--precision", choices=["fp32", "int8", "int4"], default=None,
                   help="fp32, or weights quantized round-to-nearest at export (default: the model's own; a "
                        "quantized lmforge folder keeps its levels)")
    p.add_argument("--opset", type=int, default=23,
                   help="ONNX opset of the default domain (17..24; default 23, where RMSNormalization is standard)")
    p.add_argument("--group-size", type=int, default=32, help="int4 from float: columns per scale (32)")
    p.add_argument("--accuracy-level", type=int, default=4,
                   help="MatMulNBits compute: 4 = INT8 activations per block (fast, default), 0 = float32")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plan", help="which precisions fit a device with weights + KV cache + working memory")
    p.add_argument("model", nargs="?", default=None, help="model, config.json or catalogue name")
    p.add_argument("--device-memory", default="8GB", help="device memory, e.g. 8GB, 16GiB (default 8GB)")
    p.add_argument("--context", type=int, default=None, help="tokens per sequence (default: model's window)")
    p.add_argument("--batch", type=int, default=1, help="sequences at once")
    p.add_argument("--kv-dtype", default="fp16", help="KV-cache precision: fp32, fp16, bf16, int8")
    p.add_argument("--max-utilization", type=float, default=0.8, help="share of device memory to use (0.8)")
    p.add_argument("--prompt", type=int, default=None, help="context budget: prompt tokens")
    p.add_argument("--history", type=int, default=None, help="context budget: chat-history tokens")
    p.add_argument("--retrieval", type=int, default=None, help="context budget: retrieved-text tokens")
    p.add_argument("--output", type=int, default=0, help="context budget: tokens reserved for the answer")
    p.add_argument("--list", action="store_true", help="list the built-in catalogue and exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tokenize", help="token ids, tokens and counts; cost per character and word")
    p.add_argument("text", nargs="*", default=[])
    p.add_argument("--file", action="append", default=[], help="read a text from a file (repeatable)")
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--summary", action="store_true", help="counts only, no ids")
    p.add_argument("--show", type=int, default=64, help="print ids and tokens of texts up to this many tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("sampling", help="probability tables for logits under temperatures and filters")
    p.add_argument("--logits", default="3,2,1,0.5")
    p.add_argument("--temperature", default="0.1,0.5,1,2", help="comma-separated temperatures")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sampling)

    p = sub.add_parser("formats", help="FP32/FP16/BF16/INT8/INT4 layouts, ranges and precision")
    p.add_argument("--value", type=float, default=3.14159265, help="example value to encode")
    p.add_argument("--params", type=float, default=None, help="also show a model of this many parameters (6e9)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_formats)

    from lmforge.cli_measure import add_commands
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "plan" and args.list:
        from lmforge import catalogue
        for name in catalogue.names():
            print(name)
        return 0
    try:
        return args.func(args)
    except LmforgeError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
