"""`lmforge plan`: which precisions fit a device; a context-window budget."""

from __future__ import annotations

from rich.table import Table

from lmforge.cli.common import fmt_params, out, print_json


def add_parser(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list:
        from lmforge import catalogue

        for name in catalogue.names():
            print(name)
        return 0
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
        print_json(data)
        return 0
    table = Table(title=f"{name} ({fmt_params(config.num_parameters)} parameters) on a "
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
