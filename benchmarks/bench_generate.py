"""lmforge against transformers' generate on the embedded model, same weights and dtype, same run.

Each (tool, dtype) runs in its own process so peak memory is its own. Prints a table, writes
benchmarks/out/bench_generate.json and the section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_generate.py [--dtypes float32,bfloat16] [--decode 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT_TOKENS = 512


def measure_bandwidth_gbs() -> float:
    """Read + write bytes per second of a large tensor copy (best of 5)."""
    import torch

    src = torch.empty(256 * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def _prompt_ids(vocab: int, n: int) -> list[int]:
    import torch

    return torch.randint(100, vocab - 100, (n,), generator=torch.Generator().manual_seed(0)).tolist()


def run_lmforge(dtype: str, decode: int, no_cache_tokens: int) -> dict:
    import torch

    import lmforge
    from lmforge import SamplingParams

    lm = lmforge.load("smollm2-135m", dtype)
    engine = lm.engine(max_batch=1, max_seq_len=PROMPT_TOKENS + decode + 8)
    long_prompt = _prompt_ids(lm.config.vocab_size, PROMPT_TOKENS)
    short_prompt = long_prompt[:32]
    greedy = SamplingParams(temperature=0, max_tokens=decode, ignore_eos=True)
    for _ in range(2):  # warm up
        engine.generate([short_prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
        engine.generate([long_prompt], SamplingParams(temperature=0, max_tokens=1))
    prefill = min(engine.generate([long_prompt], SamplingParams(temperature=0, max_tokens=1))[0].ttft_s
                  for _ in range(5))
    runs = [engine.generate([short_prompt], greedy)[0] for _ in range(2)]
    best = min(runs, key=lambda c: c.tpot_s)
    no_cache = engine.generate([short_prompt], SamplingParams(temperature=0, max_tokens=no_cache_tokens,
                                                              ignore_eos=True), use_cache=False)[0]
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    return {"prefill_tokens_per_s": PROMPT_TOKENS / prefill, "ttft_s": best.ttft_s, "tpot_s": best.tpot_s,
            "decode_tokens_per_s": 1 / best.tpot_s, "no_cache_tpot_s": no_cache.tpot_s,
            "weight_bytes": weight_bytes, "threads": torch.get_num_threads()}


def run_transformers(dtype: str, decode: int, no_cache_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.loading import convert_gguf, default_cache_dir, resolve

    folder = convert_gguf(resolve("smollm2-135m"), default_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
    long_prompt = torch.tensor([_prompt_ids(model.config.vocab_size, PROMPT_TOKENS)])
    short_prompt = long_prompt[:, :32]

    def generate(ids, n, use_cache=True):
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, use_cache=use_cache, pad_token_id=0)
        return time.perf_counter() - t

    def first_token(ids):
        return generate(ids, 1)

    for _ in range(2):  # its first calls are several times slower than the steady state
        generate(short_prompt, decode)
        first_token(long_prompt)
    prefill = min(first_token(long_prompt) for _ in range(5))
    ttft = min(first_token(short_prompt) for _ in range(5))
    total = min(generate(short_prompt, decode) for _ in range(2))
    tpot = (total - ttft) / (decode - 1)
    no_cache_total = generate(short_prompt, no_cache_tokens, use_cache=False)
    no_cache_tpot = (no_cache_total - ttft) / (no_cache_tokens - 1)
    return {"prefill_tokens_per_s": PROMPT_TOKENS / prefill, "ttft_s": ttft, "tpot_s": tpot,
            "decode_tokens_per_s": 1 / tpot, "no_cache_tpot_s": no_cache_tpot,
            "threads": torch.get_num_threads()}


def child(tool: str, dtype: str, decode: int, no_cache_tokens: int) -> None:
    fn = run_lmforge if tool == "lmforge" else run_transformers
    result = fn(dtype, decode, no_cache_tokens)
    result["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result))


def spawn(tool: str, dtype: str, decode: int, no_cache_tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", tool, "--dtypes", dtype, "--decode", str(decode),
                           "--no-cache-tokens", str(no_cache_tokens)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{tool} {dtype} failed:\n{proc.stderr[-3000:]}")


def write_results_section(results: dict, dtypes: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (between its markers) with today's figures."""
    lines = [f"Measured {results['date']} on {results['machine']}; copy bandwidth "
             f"{results['bandwidth_gbs']:.1f} GB/s. Greedy, {results['prompt_tokens']}-token prefill, "
             f"{results['decode_tokens']} decoded tokens, both tools warm (two runs first).", "",
             "| dtype | tool | prefill tok/s | decode tok/s | TTFT ms | TPOT ms | no-cache TPOT ms | peak MB "
             "| decode vs transformers | prefill vs transformers | of bandwidth bound |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for dtype in dtypes:
        for tool in ("transformers", "lmforge"):
            r = results["runs"][f"{tool}/{dtype}"]
            ours = tool == "lmforge"
            lines.append(
                f"| {dtype} | {tool} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                f"{r['ttft_s'] * 1e3:.0f} | {r['tpot_s'] * 1e3:.1f} | {r['no_cache_tpot_s'] * 1e3:.0f} | "
                f"{r['peak_memory_bytes'] / 1e6:.0f} | {r['decode_ratio']:.2f}x | {r['prefill_ratio']:.2f}x | "
                f"{r['fraction_of_bound']:.0%} |" if ours else
                f"| {dtype} | {tool} | {r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                f"{r['ttft_s'] * 1e3:.0f} | {r['tpot_s'] * 1e3:.1f} | {r['no_cache_tpot_s'] * 1e3:.0f} | "
                f"{r['peak_memory_bytes'] / 1e6:.0f} | 1.00x | 1.00x | |")
    begin, end = "<!-- bench_generate:begin -->", "<!-- bench_generate:end -->"
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    section = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n## Generation speed (`benchmarks/bench_generate.py`)\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--no-cache-tokens", type=int, default=32)
    parser.add_argument("--child", default=None)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_generate.json"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dtypes, args.decode, args.no_cache_tokens)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    bandwidth = measure_bandwidth_gbs()
    results = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "bandwidth_gbs": bandwidth, "prompt_tokens": PROMPT_TOKENS,
               "decode_tokens": args.decode, "runs": {}}
    for dtype in args.dtypes.split(","):
        for tool in ("transformers", "lmforge"):
            console.print(f"[dim]measuring {tool} {dtype} ...[/dim]")
            results["runs"][f"{tool}/{dtype}"] = spawn(tool, dtype, args.decode, args.no_cache_tokens)

    table = Table(title=f"Embedded model (SmolLM2-135M), greedy, {PROMPT_TOKENS}-token prefill, "
                        f"{args.decode} decoded tokens; copy bandwidth {bandwidth:.1f} GB/s")
    for col in ("dtype", "tool", "prefill tok/s", "decode tok/s", "TTFT ms", "TPOT ms", "no-cache TPOT ms",
                "peak MB", "decode vs transformers", "prefill vs transformers", "bandwidth bound tok/s",
                "of bound"):
        table.add_column(col, justify="left" if col in ("dtype", "tool") else "right")
    for dtype in args.dtypes.split(","):
        ref = results["runs"][f"transformers/{dtype}"]
        ours = results["runs"][f"lmforge/{dtype}"]
        bound = bandwidth * 1e9 / ours["weight_bytes"]
        ours["decode_ratio"] = ours["decode_tokens_per_s"] / ref["decode_tokens_per_s"]
        ours["prefill_ratio"] = ours["prefill_tokens_per_s"] / ref["prefill_tokens_per_s"]
        ours["bandwidth_bound_tokens_per_s"] = bound
        ours["fraction_of_bound"] = ours["decode_tokens_per_s"] / bound
        for tool, r in (("transformers", ref), ("lmforge", ours)):
            table.add_row(dtype, tool, f"{r['prefill_tokens_per_s']:.0f}", f"{r['decode_tokens_per_s']:.1f}",
                          f"{r['ttft_s'] * 1e3:.0f}", f"{r['tpot_s'] * 1e3:.1f}", f"{r['no_cache_tpot_s'] * 1e3:.0f}",
                          f"{r['peak_memory_bytes'] / 1e6:.0f}",
                          f"{r['decode_ratio']:.2f}x" if tool == "lmforge" else "1.00x",
                          f"{r['prefill_ratio']:.2f}x" if tool == "lmforge" else "1.00x",
                          f"{bound:.1f}" if tool == "lmforge" else "",
                          f"{r['fraction_of_bound']:.0%}" if tool == "lmforge" else "")
    console.print(table)
    write_results_section(results, args.dtypes.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
