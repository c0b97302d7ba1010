"""`lmforge generate` and `lmforge chat`."""

from __future__ import annotations

import sys

from rich.table import Table

from lmforge.cli.common import (
    add_kv_cache_arg,
    add_model_arg,
    add_sampling_args,
    err,
    kv_dtype,
    load_model,
    out,
    peak_memory_bytes,
    print_json,
    sampling_params,
)


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (or answer it with --chat)")
    p.add_argument("prompt")
    add_model_arg(p)
    add_sampling_args(p)
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence per token (no KV cache)")
    add_kv_cache_arg(p)
    p.add_argument("--compare", nargs="+", metavar="SETTINGS",
                   help="run the prompt under several settings, e.g. 'temperature=0.1' 'temperature=1.0,top_p=0.9'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_generate)

    p = sub.add_parser("chat", help="multi-turn chat on stdin (oldest turns drop when the window is full)")
    add_model_arg(p)
    add_sampling_args(p)
    p.add_argument("--system", default=None)
    p.add_argument("--context", type=int, default=None, help="context window to use (default: the model's)")
    add_kv_cache_arg(p)
    p.set_defaults(func=run_chat)


def stats_line(c, peak: int) -> str:
    return (f"[dim]{c.prompt_tokens} prompt + {c.completion_tokens} new tokens · TTFT {c.ttft_s * 1e3:.0f} ms · "
            f"TPOT {c.tpot_s * 1e3:.1f} ms · {c.tokens_per_s:.1f} tokens/s · finish: {c.finish_reason} · "
            f"peak memory {peak / 1e6:.0f} MB[/dim]")


def completion_json(c, peak: int) -> dict:
    return {"text": c.text, "token_ids": c.token_ids, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
            "ttft_s": c.ttft_s, "tpot_s": c.tpot_s, "tokens_per_s": c.tokens_per_s,
            "peak_memory_bytes": peak}


def stream_to_stdout(engine, prompt, params):
    completion = None
    for output in engine.stream(prompt, params):
        sys.stdout.write(output.delta_text)
        sys.stdout.flush()
        completion = output.completion
    sys.stdout.write("\n")
    return completion


def run_generate(args) -> int:
    from lmforge.sampling import SamplingParams

    base = sampling_params(args)
    variants = [SamplingParams.parse(spec, base) for spec in args.compare] if args.compare else [base]
    lm = load_model(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
        prompt = lm.tokenizer.apply_chat_template(messages)
    else:
        prompt = lm.tokenizer.encode(args.prompt)
    longest = max(v.max_tokens for v in variants)
    engine = lm.engine(max_batch=len(variants), max_seq_len=min(lm.config.max_position_embeddings,
                                                                len(prompt) + longest + 1), kv_dtype=kv_dtype(args))
    for v in variants:
        engine.check_fits(len(prompt), v)

    if args.compare:
        completions = engine.generate([prompt] * len(variants), variants, use_cache=not args.no_cache)
        peak = peak_memory_bytes()
        if args.json:
            print_json([{"settings": spec, **completion_json(c, peak)} for spec, c in zip(args.compare, completions)])
            return 0
        table = Table(title="Same prompt, different sampling settings", show_lines=True)
        for col in ("settings", "answer", "tokens", "finish"):
            table.add_column(col)
        for spec, c in zip(args.compare, completions):
            table.add_row(spec, c.text, str(c.completion_tokens), c.finish_reason)
        out.print(table)
        return 0

    if args.stream and not args.no_cache and not args.json:
        completion = stream_to_stdout(engine, prompt, base)
    else:
        completion = engine.generate([prompt], base, use_cache=not args.no_cache)[0]
        if not args.json:
            out.print(completion.text, markup=False)
    peak = peak_memory_bytes()
    if args.json:
        print_json(completion_json(completion, peak))
    else:
        err.print(stats_line(completion, peak))
    return 0


def run_chat(args) -> int:
    from lmforge.conversation import trim_history

    lm = load_model(args)
    params = sampling_params(args)
    window = min(args.context or lm.config.max_position_embeddings, lm.config.max_position_embeddings)
    engine = lm.engine(max_batch=1, max_seq_len=window, kv_dtype=kv_dtype(args))
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
        completion = stream_to_stdout(engine, prompt, params)
        history.append({"role": "assistant", "content": completion.text})
        err.print(stats_line(completion, peak_memory_bytes()))
    return 0
