"""`lmforge serve` under concurrent streams, against its own single-stream decode in the same run.

Starts a server on the embedded model, then drives it with lmforge's load generator (the same one
`lmforge bench serve` uses): one stream at a time (the reference), and C concurrent streams
(closed loop). Greedy, 64 new tokens, random ~100-token prompts, streaming.
Prints a table, writes benchmarks/out/bench_serve.json and its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_serve.py [--concurrency 8] [--requests 24] [--backend torch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402


def main() -> None:
    from lmforge.api import load_tokenizer
    from lmforge.bench.loadgen import LoadSpec, random_prompts
    from lmforge.bench.serve_bench import run_serve_bench
    from lmforge.serve.process import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="requests in the concurrent phase (24)")
    parser.add_argument("--single", type=int, default=4, help="requests in the single-stream phase (4)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="server compute dtype (torch backend; bfloat16 batches better on AMX CPUs)")
    parser.add_argument("--out", default=str(HERE / "out" / "bench_serve.json"))
    args = parser.parse_args()

    prompts = random_prompts(load_tokenizer(None), args.single + args.requests + 4, args.prompt_tokens, seed=1)
    server_args = ["--max-batch", str(args.concurrency), "--backend", args.backend, "--cache-size", "0"]
    if args.backend == "torch":
        server_args += ["--dtype", args.dtype]
    dtype = args.dtype if args.backend == "torch" else "float32"
    with ServerProcess(None, server_args) as server:
        spec = LoadSpec(server.url, "smollm2-135m", prompts, args.tokens, ignore_eos=True)
        single = run_serve_bench(spec, concurrencies=[1], num_requests=args.single, warmup=2,
                                 server_pid=server.pid)["levels"][0]
        many = run_serve_bench(spec, concurrencies=[args.concurrency], num_requests=args.requests, warmup=0,
                               server_pid=server.pid)["levels"][0]
    s1, sc = single["summary"], many["summary"]
    speedup = sc["output_token_throughput"] / s1["output_token_throughput"]
    failed = s1["failed"] + sc["failed"]
    targets = [(f"{args.concurrency} streams: output tokens/s >= 4x single stream", f"{speedup:.2f}x", speedup >= 4),
               ("TTFT p50 < 500 ms", f"{1e3 * sc['ttft_s']['p50']:.0f} ms", sc["ttft_s"]["p50"] < 0.5),
               ("TTFT p99 < 2 s", f"{1e3 * sc['ttft_s']['p99']:.0f} ms", sc["ttft_s"]["p99"] < 2),
               ("no failed requests", str(failed), failed == 0)]
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "backend": args.backend, "dtype": dtype, "new_tokens": args.tokens, "single": single,
               "concurrent": many, "speedup": speedup, "targets": targets}

    from rich.console import Console
    from rich.table import Table

    prompt_mean = sc["prompt_tokens"] / max(sc["completed"], 1)
    header = ("streams", "requests", "output tok/s", "vs single", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
              "CPU", "failed")
    rows = []
    for level in (single, many):
        s = level["summary"]
        rows.append([f"{level['value']:g}", str(s["requests"]), f"{s['output_token_throughput']:.1f}",
                     f"{s['output_token_throughput'] / s1['output_token_throughput']:.2f}x",
                     f"{1e3 * s['ttft_s']['p50']:.0f}", f"{1e3 * s['ttft_s']['p99']:.0f}",
                     f"{1e3 * s['tpot_s']['p50']:.1f}", f"{level['resources'].get('cpu_utilization_mean', 0):.0%}",
                     str(s["failed"])])
    table = Table(title=f"lmforge serve ({args.backend}, {dtype}), greedy, {args.tokens} new tokens, "
                        f"~{prompt_mean:.0f}-token prompts")
    for col in header:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=160)
    console.print(table)
    for t, m, ok in targets:
        console.print(f"{'yes' if ok else '[red]no[/red]'}  {t}: {m}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"Measured {results['date']} on {results['machine']}; backend {args.backend}, {dtype}; reference: the same "
             f"server's single-stream decode in the same run. Greedy, {args.tokens} new tokens, streaming, "
             f"~{prompt_mean:.0f}-token random prompts, closed loop (lmforge's load generator).", "",
             "| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
    replace_section(f"bench_serve_{args.backend}_{dtype}", lines,
                    f"## Serving ({args.backend} backend, {dtype}, `benchmarks/bench_serve.py`)\n\n"
                    "Concurrent streams against the same server's single stream, measured in the same run.")


if __name__ == "__main__":
    main()
