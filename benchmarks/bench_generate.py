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
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402
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


class LmforgeRunner:
    def __init__(self, dtype: str, decode: int):
        import lmforge
        from lmforge import SamplingParams

        self.lm = lmforge.load("smollm2-135m", dtype)
        self.engine = self.lm.engine(max_batch=1, max_seq_len=PROMPT_TOKENS + decode + 8)
        self.params = SamplingParams
        self.long_prompt = _prompt_ids(self.lm.config.vocab_size, PROMPT_TOKENS)
        self.short_prompt = self.long_prompt[:32]

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.lm.model.parameters())

    def prefill_s(self) -> float:
        return self.engine.generate([self.long_prompt], self.params(temperature=0, max_tokens=1))[0].ttft_s

    def decode(self, n: int, use_cache: bool = True) -> tuple[float, float]:
        """(TTFT, TPOT) of n greedy tokens after a 32-token prompt."""
        c = self.engine.generate([self.short_prompt], self.params(temperature=0, max_tokens=n, ignore_eos=True),
                                 use_cache=use_cache)[0]
        return c.ttft_s, c.tpot_s


class TransformersRunner:
    def __init__(self, dtype: str, decode: int):
        import torch
        from transformers import AutoModelForCausalLM

        from lmforge.loading import convert_gguf, resolve
        from lmforge.paths import default_cache_dir

        self.torch = torch
        folder = convert_gguf(resolve("smollm2-135m"), default_cache_dir())
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
        self.long_prompt = torch.tensor([_prompt_ids(self.model.config.vocab_size, PROMPT_TOKENS)])
        self.short_prompt = self.long_prompt[:, :32]

    def _generate(self, ids, n: int, use_cache: bool = True) -> float:
        torch = self.torch
        t = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, use_cache=use_cache, pad_token_id=0)
        return time.perf_counter() - t

    def prefill_s(self) -> float:
        return self._generate(self.long_prompt, 1)

    def decode(self, n: int, use_cache: bool = True) -> tuple[float, float]:
        ttft = self._generate(self.short_prompt, 1)
        total = self._generate(self.short_prompt, n, use_cache)
        return ttft, (total - ttft) / (n - 1)


RUNNERS = {"lmforge": LmforgeRunner, "transformers": TransformersRunner}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def speed_child(dtype: str, decode: int, no_cache_tokens: int, repeats: int) -> dict:
    """Both tools in one process, measured in turn, so drifts in machine load hit both alike."""
    import torch

    runners = {name: cls(dtype, decode) for name, cls in RUNNERS.items()}
    for runner in runners.values():  # warm up: first calls are several times slower
        for _ in range(2):
            runner.decode(decode)
            runner.prefill_s()
    samples = {name: {"prefill": [], "ttft": [], "tpot": []} for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            samples[name]["prefill"].append(runner.prefill_s())
            ttft, tpot = runner.decode(decode)
            samples[name]["ttft"].append(ttft)
            samples[name]["tpot"].append(tpot)
    results = {}
    for name, runner in runners.items():
        s = samples[name]
        prefill, tpot = _median(s["prefill"]), _median(s["tpot"])
        results[name] = {"prefill_tokens_per_s": PROMPT_TOKENS / prefill, "ttft_s": _median(s["ttft"]),
                         "tpot_s": tpot, "decode_tokens_per_s": 1 / tpot,
                         "no_cache_tpot_s": runner.decode(no_cache_tokens, use_cache=False)[1],
                         "samples": s, "threads": torch.get_num_threads()}
    results["lmforge"]["weight_bytes"] = runners["lmforge"].weight_bytes()
    return results


def memory_child(tool: str, dtype: str, decode: int) -> dict:
    """Peak resident memory of one tool alone: load, then generate."""
    runner = RUNNERS[tool](dtype, decode)
    runner.decode(decode)
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child(kind: str, dtype: str, decode: int, no_cache_tokens: int, repeats: int) -> None:
    result = speed_child(dtype, decode, no_cache_tokens, repeats) if kind == "speed" else \
        memory_child(kind, dtype, decode)
    print("RESULT " + json.dumps(result))


def spawn(kind: str, dtype: str, args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--dtypes", dtype, "--decode", str(args.decode),
                           "--no-cache-tokens", str(args.no_cache_tokens), "--repeats", str(args.repeats)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} {dtype} failed:\n{proc.stderr[-3000:]}")


def write_results_section(results: dict, dtypes: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (between its markers) with today's figures."""
    lines = [f"Measured {results['date']} on {results['machine']}; copy bandwidth "
             f"{results['bandwidth_gbs']:.1f} GB/s. Greedy, {results['prompt_tokens']}-token prefill, "
             f"{results['decode_tokens']} decoded tokens, both tools warm (two runs first), measured in turn "
             f"in one process, medians of {results['repeats']}; peak memory of each tool alone.", "",
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
    replace_section("bench_generate", lines, "## Generation speed (`benchmarks/bench_generate.py`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--no-cache-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per tool (median)")
    parser.add_argument("--child", default=None)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_generate.json"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dtypes, args.decode, args.no_cache_tokens, args.repeats)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    bandwidth = measure_bandwidth_gbs()
    results = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "bandwidth_gbs": bandwidth, "prompt_tokens": PROMPT_TOKENS,
               "decode_tokens": args.decode, "repeats": args.repeats, "runs": {}}
    for dtype in args.dtypes.split(","):
        console.print(f"[dim]measuring speed, {dtype}: both tools in turn, {args.repeats} times ...[/dim]")
        speed = spawn("speed", dtype, args)
        for tool in RUNNERS:
            console.print(f"[dim]measuring peak memory of {tool} alone, {dtype} ...[/dim]")
            results["runs"][f"{tool}/{dtype}"] = {**speed[tool], **spawn(tool, dtype, args)}

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
