"""Where a serving process's memory goes: resident memory (RSS) of a fresh process at each stage of
starting an engine on the embedded model, beside the bytes each part should take, and llama-server's
RSS on the same model when a llama.cpp build is present (scripts/build_llama_cpp.sh).

Stages: Python, torch imported, model loaded (weights + tokenizer), engine created (KV cache
preallocated for max_batch x max_seq_len), kernels warmed up at every bounded row count (as
`lmforge serve` does before taking traffic), then varied batches (prompts of 5-300 words, 1-4 at a
time) without and with giving freed heap pages back (`lmforge.memory.release_free_memory`).

    .venv/bin/python benchmarks/bench_memory.py [--max-batch 8] [--max-seq-len 8192] [--batches 200]

Prints a table, writes benchmarks/out/bench_memory.json and its section of benchmarks/RESULTS.md.
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
from llama_cpp import DEFAULT_BIN, LlamaServer  # noqa: E402
from results_md import replace_section  # noqa: E402

MB = 2**20


def stages(dtype: str, max_batch: int, max_seq_len: int, batches: int, trim: bool) -> dict:
    """Runs in a fresh process (lmforge.isolated): RSS after each stage and the sizes of the parts."""
    import random

    import psutil

    process = psutil.Process()
    rss = [("Python", process.memory_info().rss)]
    import torch

    rss.append(("torch imported", process.memory_info().rss))
    from lmforge import api
    from lmforge.engine.engine import Engine
    from lmforge.memory import release_free_memory
    from lmforge.models.layers import warm_up_products
    from lmforge.sampling import SamplingParams

    lm = api.load(None, dtype=dtype)
    rss.append(("model loaded", process.memory_info().rss))
    tensors = {id(t): t for t in lm.model.state_dict().values()}
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    engine = Engine(lm.model, lm.tokenizer, max_batch=max_batch, max_seq_len=max_seq_len)
    rss.append(("engine created", process.memory_info().rss))
    warm_up_products(lm.model, max(engine.scheduler.prefill_chunk, max_batch))  # as lmforge serve does
    rss.append(("kernels warmed up", process.memory_info().rss))
    rng = random.Random(0)
    words = "the cat river stone light market winter song letter road garden ship".split()
    for i in range(batches):
        prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 300))) for _ in range(rng.randint(1, 4))]
        engine.generate(prompts, SamplingParams(max_tokens=rng.randint(4, 32), temperature=0.7))
        if trim:
            release_free_memory()
        if i + 1 in (1, batches // 4, batches // 2, batches):
            rss.append((f"after {i + 1} batches", process.memory_info().rss))
    return {"rss": rss, "weight_bytes": weight_bytes, "kv_bytes": engine.cache.nbytes,
            "torch_threads": torch.get_num_threads()}


def llama_server_rss(bin_dir: Path, max_batch: int, max_seq_len: int, requests: int = 8) -> float | None:
    import httpx
    import psutil

    from lmforge.loading import embedded_model_path

    if not (bin_dir / "llama-server").is_file():
        return None
    with LlamaServer(bin_dir, embedded_model_path(), parallel=max_batch, context=max_batch * max_seq_len) as server:
        for i in range(requests):
            httpx.post(server.url + "/v1/completions",
                       json={"prompt": "the river " * (20 + 30 * i), "max_tokens": 16}, timeout=120)
        if server.note:
            print(f"llama-server: {server.note}")
        return psutil.Process(server.pid).memory_info().rss / MB


def main() -> None:
    from lmforge.isolated import call

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=8, help="KV slots, as `lmforge serve` defaults (8)")
    parser.add_argument("--max-seq-len", type=int, default=8192, help="context per slot (the model's: 8192)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--llama-cpp", default=str(DEFAULT_BIN))
    parser.add_argument("--out", default=str(HERE / "out" / "bench_memory.json"))
    args = parser.parse_args()

    # the child process imports this file as `bench_memory`
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    runs = {}
    for trim in (False, True):
        print(f"engine stages, {args.dtype}, release_free_memory {'on' if trim else 'off'} ...", file=sys.stderr)
        runs["trim" if trim else "plain"] = call("bench_memory:stages", dtype=args.dtype, max_batch=args.max_batch,
                                                 max_seq_len=args.max_seq_len, batches=args.batches, trim=trim)
    reference = llama_server_rss(Path(args.llama_cpp), args.max_batch, args.max_seq_len)
    plain, trimmed = runs["plain"], runs["trim"]
    rows, previous = [], 0
    for (stage, value), (_, value_trim) in zip(plain["rss"], trimmed["rss"]):
        rows.append([stage, f"{value / MB:.0f}", f"{(value - previous) / MB:+.0f}", f"{value_trim / MB:.0f}"])
        previous = value
    parts = [("weights (tensor bytes)", plain["weight_bytes"] / MB),
             (f"KV cache ({args.max_batch} slots x {args.max_seq_len} tokens, preallocated)", plain["kv_bytes"] / MB)]
    header = ("stage", "RSS MB", "step MB", "RSS MB, freed pages returned")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    for name, value in parts:
        print(f"{name}: {value:.0f} MB")
    print("llama-server: " + (f"{reference:.0f} MB" if reference is not None
                              else f"skipped (no llama-server in {args.llama_cpp}; scripts/build_llama_cpp.sh)"))
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "dtype": args.dtype, "max_batch": args.max_batch, "max_seq_len": args.max_seq_len, "runs": runs,
               "llama_server_rss_mb": reference}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = [f"Measured {results['date']} on {results['machine']}; embedded model, {args.dtype}, engine with "
             f"{args.max_batch} slots x {args.max_seq_len} tokens (`lmforge serve`'s defaults), each column a fresh "
             f"process; {args.batches} batches of 1-4 random prompts of 5-300 words.", "",
             "| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| part | MB |", "| --- | ---: |"]
    lines += [f"| {name} | {value:.0f} |" for name, value in parts]
    lines.append(f"| llama-server -np {args.max_batch} -c {args.max_batch * args.max_seq_len}, after 8 requests | "
                 + (f"{reference:.0f} |" if reference is not None else "skipped: no build |"))
    replace_section("bench_memory", lines, "## Memory (`benchmarks/bench_memory.py`)\n\n"
                    "Where a serving process's resident memory goes, stage by stage.")


if __name__ == "__main__":
    main()
