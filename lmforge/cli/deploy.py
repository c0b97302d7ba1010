"""`lmforge deploy`: the whole deployment loop in one resumable command."""

from __future__ import annotations

from rich.table import Table

from lmforge.bench.slo import SEED_DEFAULTS
from lmforge.cli.common import number_list, out


def add_parser(sub) -> None:
    p = sub.add_parser("deploy", help="inspect, plan, quantize, export, evaluate, benchmark and report, resumably",
                       description="The whole deployment loop in one command. Each finished stage is saved in "
                                   "OUT; running the same command again resumes after the last finished stage.")
    p.add_argument("model", nargs="?", default=None, help="model (default: the embedded smollm2-135m)")
    p.add_argument("--device", default=None, help="device profile (file or shipped name, e.g. accelerator-8gb); "
                                                   "default: probe this machine")
    p.add_argument("--slo", default=SEED_DEFAULTS,
                   help="objectives (default: the seed's checklist ttft=500ms,tps=20,utilization=70%%,memory=80%%)")
    p.add_argument("--out", default="deploy", help="output folder (default: ./deploy); rerun to resume")
    p.add_argument("--concurrency", default="1,2,4", help="load levels of the served benchmark (1,2,4)")
    p.add_argument("--precisions", default="fp32,int8,int4", help="candidates, most accurate first")
    p.add_argument("--precision", default=None, choices=["fp32", "int8", "int4"], help="deploy this one; skip choosing")
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq", "awq"], help="INT4 quantization method")
    p.add_argument("--context", type=int, default=2048, help="context per sequence the memory plan reserves")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--eval-text", default=None, help="text to measure quality on (default: the shipped text)")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.set_defaults(func=run)


def run(args) -> int:
    from lmforge.deploy.pipeline import Deploy, DeploySettings

    settings = DeploySettings(model=args.model, out=args.out, device=args.device, slo=args.slo,
                              concurrency=number_list(args.concurrency, "--concurrency", int),
                              precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
                              precision=args.precision, method=args.method, context=args.context,
                              prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, eval_text=args.eval_text,
                              eval_tokens=args.eval_tokens)
    deploy = Deploy(settings, console=out)
    try:
        outcomes = deploy.run()
    finally:
        table = Table(title=f"lmforge deploy -> {args.out}")
        for c in ("stage", "status", "seconds", "result"):
            table.add_column(c, justify="right" if c == "seconds" else "left")
        for o in deploy.runner.outcomes:
            table.add_row(o.name, o.status, f"{o.seconds:.0f}", o.summary)
        out.print(table)
    report = next(o for o in outcomes if o.name == "report").data
    for line in report.get("checklist", []):
        verdict = "[green]pass[/green]" if line["passed"] else "[dim]not measured[/dim]" \
            if line["passed"] is None else "[red]FAIL[/red]"
        out.print(f"  {verdict}  {line['objective']}: {line['measured']}")
    return 0
