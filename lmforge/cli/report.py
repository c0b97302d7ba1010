"""`lmforge report`: results as report.html (self-contained) and report.md with plots."""

from __future__ import annotations

from lmforge.cli.common import out


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="an HTML page (and Markdown) with plots and the SLO checklist from results",
                       description="Reads JSON results (bench serve/offline --out, compare.json, device profiles, "
                                   "deploy folders) and writes report.html (self-contained), report.md and PNGs.")
    p.add_argument("results", nargs="+", help="result files or folders holding them")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the report")
    p.add_argument("--slo", default=None, help="checklist objectives (default: the seed's "
                                               "ttft=500ms,tps=20,utilization=70%%,memory=80%%)")
    p.add_argument("--device", default=None, help="device profile whose memory the memory line is judged against")
    p.add_argument("--title", default="lmforge deployment report")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmforge.atomic import require_free_folder
    from lmforge.bench.slo import SEED_DEFAULTS, parse_slo
    from lmforge.device.profile import load_profile
    from lmforge.report.render import write_report
    from lmforge.report.results import load_results

    slo = parse_slo(args.slo or SEED_DEFAULTS)
    device_memory = load_profile(args.device).memory_bytes if args.device else None
    require_free_folder(args.out)
    results = load_results(args.results)
    folder = write_report(results, args.out, args.title, slo, device_memory)
    out.print(f"wrote {folder / 'report.html'} and {folder / 'report.md'} "
              f"({len(results.sources)} result file(s))")
    return 0
