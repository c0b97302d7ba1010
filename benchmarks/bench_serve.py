"""`lmforge serve` under concurrent streams, against its own single-stream decode in the same run.

Starts a server on the embedded model, then: one stream at a time (the reference), and C
concurrent streams (closed loop: each client sends its next request when the last finishes).
Greedy, 64 new tokens, prompts of ~100 tokens, streaming; TTFT from sending to the first token.
Prints a table, writes benchmarks/out/bench_serve.json and its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_serve.py [--concurrency 8] [--requests 24] [--backend torch]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402

WORDS = ("river mountain city engine garden library window signal harbor forest market bridge lantern "
         "orchard canyon meadow").split()


def prompt(i: int, words: int = 75) -> str:
    body = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))
    return f"Request {i}. Continue this list with more words: {body}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(client, url: str, i: int, new_tokens: int) -> dict:
    body = {"model": "smollm2-135m", "prompt": prompt(i), "max_tokens": new_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    usage = None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    tokens = usage["completion_tokens"]
    return {"ok": True, "ttft_s": first - start, "e2e_s": end - start, "tokens": tokens,
            "prompt_tokens": usage["prompt_tokens"], "tpot_s": (end - first) / max(tokens - 1, 1)}


async def closed_loop(url: str, concurrency: int, total: int, new_tokens: int, offset: int) -> dict:
    import httpx

    queue = list(range(offset, offset + total))
    records = []

    async def worker(client):
        while queue:
            records.append(await one_request(client, url, queue.pop(0), new_tokens))

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [r for r in records if r["ok"]]
    return {"concurrency": concurrency, "requests": total, "failed": len(records) - len(ok), "wall_s": wall,
            "output_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50_s": percentile([r["ttft_s"] for r in ok], 0.5),
            "ttft_p99_s": percentile([r["ttft_s"] for r in ok], 0.99),
            "tpot_p50_s": percentile([r["tpot_s"] for r in ok], 0.5),
            "prompt_tokens_mean": sum(r["prompt_tokens"] for r in ok) / max(len(ok), 1), "records": records}


def start_server(args) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lmforge.cli", "serve", "--port", str(port), "--max-batch", str(args.concurrency)]
    if args.backend:
        command += ["--backend", args.backend]
    if args.dtype:
        command += ["--dtype", args.dtype]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="requests in the concurrent phase (24)")
    parser.add_argument("--single", type=int, default=4, help="requests in the single-stream phase (4)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--backend", default=None, choices=["torch", "onnxruntime"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="server compute dtype (bfloat16: the faster one for batches on AMX CPUs)")
    parser.add_argument("--out", default=str(HERE / "out" / "bench_serve.json"))
    args = parser.parse_args()

    proc, url = start_server(args)
    try:
        asyncio.run(closed_loop(url, 1, 2, args.tokens, 1000))  # warm up
        single = asyncio.run(closed_loop(url, 1, args.single, args.tokens, 0))
        many = asyncio.run(closed_loop(url, args.concurrency, args.requests, args.tokens, 100))
    finally:
        proc.terminate()
        proc.wait(60)
    speedup = many["output_tokens_per_s"] / single["output_tokens_per_s"]
    targets = [(f"{args.concurrency} streams: output tokens/s >= 4x single stream", f"{speedup:.2f}x", speedup >= 4),
               ("TTFT p50 < 500 ms", f"{1e3 * many['ttft_p50_s']:.0f} ms", many["ttft_p50_s"] < 0.5),
               ("TTFT p99 < 2 s", f"{1e3 * many['ttft_p99_s']:.0f} ms", many["ttft_p99_s"] < 2),
               ("no failed requests", str(single["failed"] + many["failed"]), single["failed"] + many["failed"] == 0)]
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "backend": args.backend or "torch", "dtype": args.dtype, "new_tokens": args.tokens, "single": single, "concurrent": many,
               "speedup": speedup, "targets": targets}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lmforge serve ({results['backend']}, {args.dtype}), greedy, {args.tokens} new tokens, "
                        f"~{many['prompt_tokens_mean']:.0f}-token prompts")
    for col in ("streams", "requests", "output tok/s", "vs single", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
                "failed"):
        table.add_column(col, justify="right")
    for r in (single, many):
        table.add_row(str(r["concurrency"]), str(r["requests"]), f"{r['output_tokens_per_s']:.1f}",
                      f"{r['output_tokens_per_s'] / single['output_tokens_per_s']:.2f}x",
                      f"{1e3 * r['ttft_p50_s']:.0f}", f"{1e3 * r['ttft_p99_s']:.0f}", f"{1e3 * r['tpot_p50_s']:.1f}",
                      str(r["failed"]))
    console = Console(width=160)
    console.print(table)
    for t, m, ok in targets:
        console.print(f"{'yes' if ok else '[red]no[/red]'}  {t}: {m}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"Measured {results['date']} on {results['machine']}; backend {results['backend']}, {args.dtype}; reference: the same "
             f"server's single-stream decode in the same run. Greedy, {args.tokens} new tokens, streaming, "
             f"~{many['prompt_tokens_mean']:.0f}-token prompts, closed loop.", "",
             "| streams | requests | output tok/s | vs single | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | failed |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in (single, many):
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['output_tokens_per_s']:.1f} | "
                     f"{r['output_tokens_per_s'] / single['output_tokens_per_s']:.2f}x | {1e3 * r['ttft_p50_s']:.0f} | "
                     f"{1e3 * r['ttft_p99_s']:.0f} | {1e3 * r['tpot_p50_s']:.1f} | {r['failed']} |")
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets]
    replace_section(f"bench_serve_{results['backend']}_{args.dtype}", lines,
                    f"## Serving ({results['backend']} backend, {args.dtype}, `benchmarks/bench_serve.py`)\n\n"
                    "Concurrent streams against the same server's single stream, measured in the same run.")


if __name__ == "__main__":
    main()
