"""The explaining commands: `lmforge tokenize`, `lmforge sampling`, `lmforge formats`."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import float_list, fmt_params, out, print_json, read_text_arg
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    p = sub.add_parser("tokenize", help="token ids, tokens and counts; cost per character and word")
    p.add_argument("text", nargs="*", default=[])
    p.add_argument("--file", action="append", default=[], help="read a text from a file (repeatable)")
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--summary", action="store_true", help="counts only, no ids")
    p.add_argument("--show", type=int, default=64, help="print ids and tokens of texts up to this many tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_tokenize)

    p = sub.add_parser("sampling", help="probability tables for logits under temperatures and filters")
    p.add_argument("--logits", default="3,2,1,0.5")
    p.add_argument("--temperature", default="0.1,0.5,1,2", help="comma-separated temperatures")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_sampling)

    p = sub.add_parser("formats", help="FP32/FP16/BF16/INT8/INT4 layouts, ranges and precision")
    p.add_argument("--value", type=float, default=3.14159265, help="example value to encode")
    p.add_argument("--params", type=float, default=None, help="also show a model of this many parameters (6e9)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_formats)


def run_tokenize(args) -> int:
    from lmforge.loading import load_checkpoint
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenstats import token_stats

    texts = [read_text_arg(None, f) for f in args.file] + list(args.text)
    if not texts:
        raise LmforgeError("give one or more texts, or --file")
    checkpoint = load_checkpoint(args.model)
    tokenizer = Tokenizer.from_dir(checkpoint.tokenizer_dir)
    stats = [token_stats(tokenizer, t) for t in texts]
    if args.json:
        print_json([{"text": s.text if len(s.text) <= 200 else s.text[:200] + "...",
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


def run_sampling(args) -> int:
    import torch

    from lmforge.sampling import probabilities

    logits = torch.tensor(float_list(args.logits, "logits"), dtype=torch.float64)
    temperatures = float_list(args.temperature, "temperature")
    if any(t < 0 for t in temperatures):
        raise LmforgeError("--temperature values must be >= 0")
    if not 0 < args.top_p <= 1 or args.top_k < 0 or not 0 <= args.min_p <= 1:
        raise LmforgeError("--top-p must be in (0, 1], --top-k >= 0, --min-p in [0, 1]")
    rows = [(t, probabilities(logits, t, args.top_k, args.top_p, args.min_p).tolist()) for t in temperatures]
    if args.json:
        print_json({"logits": logits.tolist(), "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
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


def run_formats(args) -> int:
    from lmforge.formats import bit_pattern, number_formats, stored_value
    from lmforge.plan import format_bytes

    formats = number_formats()
    if args.json:
        print_json({"formats": [vars(f) | {"bytes": f.bytes, "example_bits": bit_pattern(args.value, f.name),
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
        mem = Table(title=f"A model of {fmt_params(int(args.params))} parameters")
        mem.add_column("format")
        mem.add_column("weights", justify="right")
        for f in formats:
            mem.add_row(f.name, format_bytes(args.params * f.bytes))
        out.print(mem)
    return 0
