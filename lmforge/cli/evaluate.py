"""`lmforge eval`: perplexity on a text; KL and top-1 agreement against a reference."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lmforge.cli.common import add_backend_arg, add_dtype_arg, load_model, out, print_json, read_text_arg
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity on a text; KL and top-1 agreement against a reference")
    p.add_argument("model", nargs="?", default=None, help="model to evaluate (default: the embedded one)")
    add_dtype_arg(p)
    add_backend_arg(p)
    p.add_argument("--text", required=True, help="UTF-8 text file to score")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (512)")
    p.add_argument("--stride", type=int, default=256, help="window step in tokens (256; equal to --ctx for non-overlapping windows)")
    p.add_argument("--max-text-tokens", type=int, default=None, help="score only the first N tokens of the text")
    p.add_argument("--reference", default=None, help="reference model for KL / top-1 (default: the same model)")
    p.add_argument("--reference-dtype", default=None, choices=["float32", "bfloat16"],
                   help="reference dtype (default float32); giving it alone compares dtypes of one model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmforge.api import load
    from lmforge.evaluate import check_window_args, evaluate

    check_window_args(args.ctx, args.stride)  # before the model loads (tens of seconds)
    text = read_text_arg(None, args.text)
    if args.max_text_tokens is not None and args.max_text_tokens < 2:
        raise LmforgeError("--max-text-tokens must be at least 2")
    lm = load_model(args)
    ids = lm.tokenizer.encode(text, add_special_tokens=False)[: args.max_text_tokens]
    reference = None
    if args.reference is not None or args.reference_dtype is not None:
        reference = load(args.reference if args.reference is not None else args.model,
                         args.reference_dtype or "float32").model
    result = evaluate(lm.model, ids, ctx=args.ctx, stride=args.stride, reference=reference)
    dtype_name = str(lm.model.dtype).removeprefix("torch.")
    if args.json:
        print_json({"model": lm.name, "dtype": dtype_name, "text": args.text, "ctx": args.ctx,
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
