"""How well `lmforge probe` + its predictions match what lmforge measures, on the embedded model.

Probes this machine into a device profile, then measures each variant with `lmforge bench offline`
(each in its own process) and sets the profile's predictions beside the measurements, all in
one run. Target: every prediction (decode tokens/s, prefill tokens/s) within 35 % of the measurement.
Prints a table, writes benchmarks/out/bench_predict.json and its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_predict.py [--variants torch:fp32,onnxruntime:int4,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402

VARIANTS = "torch:fp32,torch:bf16,onnxruntime:fp32,onnxruntime:int8,onnxruntime:int4"
TOLERANCE = 0.35


def lmforge(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lmforge {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_predict.json"))
    args = parser.parse_args()
    work = Path(args.out).parent / "bench_predict"
    work.mkdir(parents=True, exist_ok=True)
    profile = work / "profile.json"
    print("probing this machine ...", flush=True)
    lmforge("probe", "--out", str(profile), "--json")
    runs = []
    for variant in args.variants.split(","):
        backend, precision = variant.split(":")
        print(f"measuring {backend} {precision} ...", flush=True)
        out = work / f"{backend}-{precision}.json"
        lmforge("bench", "offline", "--backend", backend, "--precision", precision, "--device", str(profile),
                "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens),
                "--out", str(out), "--json")
        runs.append(json.loads(out.read_text()))

    header = ("variant", "decode tok/s measured", "predicted", "error", "prefill tok/s measured", "predicted",
              "error")
    rows, worst = [], 0.0
    for r in runs:
        p = r["prediction"]
        worst = max(worst, abs(p["decode_error"]), abs(p["prefill_error"]))
        rows.append([f"{r['backend']} {r['precision']}", f"{r['decode_tokens_per_s']:.1f}",
                     f"{p['decode_tokens_per_s']:.1f}", f"{p['decode_error']:+.0%}",
                     f"{r['prefill_tokens_per_s']:.0f}", f"{p['prefill_tokens_per_s']:.0f}", f"{p['prefill_error']:+.0%}"])
    within = sum(abs(r["prediction"][k]) <= TOLERANCE for r in runs for k in ("decode_error", "prefill_error"))
    total = 2 * len(runs)
    results = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "profile": json.loads(profile.read_text()), "runs": runs,
               "worst_error": worst, "within_tolerance": within, "predictions": total}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Predicted against measured, embedded model, {args.prompt_tokens}-token prefill, "
                        f"{args.decode_tokens} decoded tokens")
    for col in header:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    met = within == total
    console.print(f"{'yes' if met else '[red]no[/red]'}  predictions within 35 % of the measurement: "
                  f"{within}/{total} (worst {worst:.0%})")
    Path(args.out).write_text(json.dumps(results, indent=2))
    lines = [f"Measured {results['date']} on {results['machine']}: `lmforge probe` then `lmforge bench offline "
             f"--device` for each variant, each in its own process, in one run. {args.prompt_tokens}-token "
             f"prefill, {args.decode_tokens} decoded tokens after it, medians of 3.", "",
             "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |",
              f"| every prediction within 35 % of the measurement | {within}/{total} (worst {worst:.0%}) | "
              f"{'yes' if met else '**no**'} |"]
    replace_section("bench_predict", lines, "## Predictions (`benchmarks/bench_predict.py`)\n\n"
                    "What a probed device profile predicts for each variant against what lmforge measures.")


if __name__ == "__main__":
    main()
