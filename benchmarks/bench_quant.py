"""Quantized variants of the embedded model against lmforge float32, measured in the same run.

Speed: decode tokens/s (128 greedy tokens after a 32-token prompt) and prefill tokens/s (512-token
prompt) of each variant, measured in turn in one process (medians of 5, after warm-up), with the
resident weight memory of each. Quality: perplexity on WikiText-2 test (first N tokens, window 512,
stride 256), delta against float32, KL divergence and top-1 agreement, and the issue's targets.
Prints tables, writes benchmarks/out/bench_quant.json and its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_quant.py [--part speed|quality|all] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402
WIKITEXT = HERE.parents[1] / "shared" / "data" / "wikitext2_test.txt"

SPEED_VARIANTS = {  # name -> recipe keyword arguments (None: a float dtype)
    "fp32": None,
    "bf16": None,
    "int8 (RTN per channel)": dict(method="rtn", bits=8),
    "int4 (RTN g128, int8 head)": dict(method="rtn", bits=4, granularity="group", group_size=128),
    "int4 (RTN g128, int4 head)": dict(method="rtn", bits=4, granularity="group", group_size=128, head_bits=4),
    "int4 (GPTQ act-order g128 layout)": dict(method="rtn", bits=4, granularity="group", group_size=128,
                                              desc_act=True),
}
# The same quantized weights run by ONNX Runtime's MatMulNBits (INT8 activations per block), through
# lmforge's onnxruntime backend: export_onnx arguments.
ONNX_SPEED_VARIANTS = {
    "int8 (RTN per channel, ONNX Runtime)": dict(precision="int8"),
    "int4 (RTN g128, int8 head, ONNX Runtime)": dict(precision="int4", group_size=128),
}
QUALITY_VARIANTS = {
    "int8 RTN per channel": dict(method="rtn", bits=8),
    "int4 RTN g128": dict(method="rtn", bits=4, granularity="group", group_size=128),
    "int4 GPTQ g128": dict(method="gptq", bits=4, granularity="group", group_size=128),
    "int4 AWQ g128": dict(method="awq", bits=4, granularity="group", group_size=128),
    "int4 RTN g128, int4 head": dict(method="rtn", bits=4, granularity="group", group_size=128, head_bits=4),
    "W8A8 RTN per tensor": dict(method="rtn", bits=8, granularity="tensor", activations="tensor"),
    "W8A8 SmoothQuant": dict(method="smoothquant"),
    "LLM.int8()": dict(method="llm-int8"),
}


def _median(values):
    return sorted(values)[len(values) // 2]


def build_onnx(kwargs: dict, folder: Path):
    import lmforge
    from lmforge.onnx.export import export_onnx

    export_onnx("smollm2-135m", folder, show_progress=False, **kwargs)
    return lmforge.load(folder)


def build(name: str, kwargs: dict | None):
    import lmforge
    from lmforge.quant.recipe import QuantRecipe
    from lmforge.quant.workflow import quantize_loaded

    if kwargs is None:
        return lmforge.load("smollm2-135m", "bfloat16" if name == "bf16" else "float32")
    lm = lmforge.load("smollm2-135m", "float32")
    quantize_loaded(lm, QuantRecipe(**kwargs), show_progress=False)
    return lm


def speed(repeats: int, decode_tokens: int) -> dict:
    import torch

    from lmforge import SamplingParams
    from lmforge.quant.workflow import weight_bytes

    generator = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(100, 49000, (512,), generator=generator).tolist()
    short_prompt = long_prompt[:32]
    runners = {}
    for name, kwargs in SPEED_VARIANTS.items():
        lm = build(name, kwargs)
        if "act-order" in name:  # GPTQ's act-order layout: the same kernel behind an input permutation
            from lmforge.quant.linear import Int4Linear
            for module in lm.model.modules():
                if isinstance(module, Int4Linear) and module.input_perm is None and module.row_levels is None:
                    module.input_perm = torch.randperm(module.in_features, generator=generator)
        runners[name] = (lm, lm.engine(max_batch=1, max_seq_len=512 + decode_tokens + 8))
    work = tempfile.TemporaryDirectory()
    onnx_bytes = {}
    for name, kwargs in ONNX_SPEED_VARIANTS.items():
        lm = build_onnx(kwargs, Path(work.name) / name.split()[0])
        onnx_bytes[name] = (Path(work.name) / name.split()[0] / "model.onnx.data").stat().st_size
        runners[name] = (lm, lm.engine(max_batch=1, max_seq_len=512 + decode_tokens + 8))
    decode_params = SamplingParams(temperature=0, max_tokens=decode_tokens, ignore_eos=True)
    prefill_params = SamplingParams(temperature=0, max_tokens=1)
    for _, engine in runners.values():  # warm up: the first calls are slower
        for _ in range(3):
            engine.generate([short_prompt], decode_params)
            engine.generate([long_prompt], prefill_params)
    samples = {name: {"tpot": [], "prefill": []} for name in runners}
    for _ in range(repeats):
        for name, (_, engine) in runners.items():
            samples[name]["tpot"].append(engine.generate([short_prompt], decode_params)[0].tpot_s)
            samples[name]["prefill"].append(engine.generate([long_prompt], prefill_params)[0].ttft_s)
    results = {}
    for name, (lm, _) in runners.items():
        tpot, prefill = _median(samples[name]["tpot"]), _median(samples[name]["prefill"])
        resident = onnx_bytes[name] if name in onnx_bytes else weight_bytes(lm.model)  # ONNX: the weights file
        results[name] = {"tpot_s": tpot, "decode_tokens_per_s": 1 / tpot, "prefill_tokens_per_s": 512 / prefill,
                         "weight_bytes": resident, "samples": samples[name]}
    work.cleanup()
    ref = results["fp32"]
    for r in results.values():
        r["decode_vs_fp32"] = r["decode_tokens_per_s"] / ref["decode_tokens_per_s"]
        r["prefill_vs_fp32"] = r["prefill_tokens_per_s"] / ref["prefill_tokens_per_s"]
        r["memory_vs_fp32"] = r["weight_bytes"] / ref["weight_bytes"]
    return results


def quality(tokens: int) -> dict:
    import lmforge
    from lmforge.evaluate import evaluate
    from lmforge.quant.recipe import QuantRecipe
    from lmforge.quant.serialize import save_quantized
    from lmforge.quant.workflow import quantize_loaded, weights_file_bytes

    reference = lmforge.load("smollm2-135m", "float32")
    ids = reference.tokenizer.encode(WIKITEXT.read_text(encoding="utf-8"), add_special_tokens=False)[:tokens]
    base = evaluate(reference.model, ids, 512, 256, show_progress=False)
    results = {"fp32": {"perplexity": base.perplexity, "delta_pct": 0.0, "kl": 0.0, "top1": 1.0}}
    for name, kwargs in QUALITY_VARIANTS.items():
        print(f"  {name} ...", file=sys.stderr, flush=True)
        lm = lmforge.load("smollm2-135m", "float32")
        recipe = QuantRecipe(**kwargs)
        start = time.perf_counter()
        report = quantize_loaded(lm, recipe, show_progress=False)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_quantized(lm.model, lm.config, recipe, report.weights, lm.checkpoint.tokenizer_dir,
                                    Path(tmp) / "model")
            file_bytes = weights_file_bytes(folder)
        scored = evaluate(lm.model, ids, 512, 256, reference=reference.model, show_progress=False)
        results[name] = {"perplexity": scored.perplexity, "delta_pct": 100 * (scored.perplexity / base.perplexity - 1),
                         "kl": scored.kl_divergence, "top1": scored.top1_agreement, "quantize_s": seconds,
                         "file_bytes": file_bytes}
    return {"tokens_scored": base.tokens_scored, "variants": results}


def targets(speed_results: dict | None, quality_results: dict | None) -> list[tuple[str, str, bool]]:
    rows = []
    if speed_results:
        s = speed_results

        def best(prefix):  # the fastest of lmforge's paths at this precision (PyTorch or ONNX Runtime kernels)
            name = max((k for k in s if k.startswith(prefix)), key=lambda k: s[k]["decode_vs_fp32"])
            return name, s[name]

        int8_name, int8 = best("int8")
        int4_name, int4 = best("int4 (RTN g128, int8 head")  # the default INT4 configuration
        rows += [("INT8 decode >= 2.5x float32", f"{int8['decode_vs_fp32']:.2f}x ({int8_name})",
                  int8["decode_vs_fp32"] >= 2.5),
                 ("INT4 decode >= 3.5x float32", f"{int4['decode_vs_fp32']:.2f}x ({int4_name})",
                  int4["decode_vs_fp32"] >= 3.5),
                 ("INT8 resident weights <= 0.3x float32", f"{int8['memory_vs_fp32']:.3f}x ({int8_name})",
                  int8["memory_vs_fp32"] <= 0.3),
                 ("INT4 resident weights <= 0.2x float32", f"{int4['memory_vs_fp32']:.3f}x ({int4_name})",
                  int4["memory_vs_fp32"] <= 0.2)]
    if quality_results:
        q = quality_results["variants"]
        rtn = q["int4 RTN g128"]["delta_pct"]
        rows.append(("INT8 per-channel RTN delta perplexity <= 0.5 %", f"{q['int8 RTN per channel']['delta_pct']:.2f} %",
                     q["int8 RTN per channel"]["delta_pct"] <= 0.5))
        for method in ("GPTQ", "AWQ"):
            removed = 1 - q[f"int4 {method} g128"]["delta_pct"] / rtn
            rows.append((f"INT4 g128 {method} removes >= 30 % of RTN's delta perplexity", f"{100 * removed:.0f} %",
                         removed >= 0.30))
        rows.append(("SmoothQuant W8A8 delta < W8A8 per-tensor RTN delta",
                     f"{q['W8A8 SmoothQuant']['delta_pct']:.2f} % vs {q['W8A8 RTN per tensor']['delta_pct']:.2f} %",
                     q["W8A8 SmoothQuant"]["delta_pct"] < q["W8A8 RTN per tensor"]["delta_pct"]))
    return rows


def write_results_section(results: dict) -> None:
    lines = [f"Measured {results['date']} on {results['machine']}; reference: lmforge float32 in the same run."]
    if results.get("speed"):
        lines += ["", f"Speed: greedy, {results['decode_tokens']} tokens decoded after a 32-token prompt, "
                      f"512-token prefill, variants measured in turn in one process, medians of {results['repeats']}.",
                  "", "| variant | decode tok/s | vs fp32 | prefill tok/s | vs fp32 | resident weights MB | vs fp32 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in results["speed"].items():
            lines.append(f"| {name} | {r['decode_tokens_per_s']:.1f} | {r['decode_vs_fp32']:.2f}x | "
                         f"{r['prefill_tokens_per_s']:.0f} | {r['prefill_vs_fp32']:.2f}x | "
                         f"{r['weight_bytes'] / 1e6:.1f} | {r['memory_vs_fp32']:.3f}x |")
    if results.get("quality"):
        q = results["quality"]
        lines += ["", f"Quality: WikiText-2 test, first {q['tokens_scored']} scored tokens, window 512, stride 256; "
                      f"calibration (GPTQ, AWQ, SmoothQuant): 32 x 512 tokens of the text lmforge ships.", "",
                  "| variant | perplexity | delta | KL | top-1 | file MB | quantize s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in q["variants"].items():
            lines.append(f"| {name} | {r['perplexity']:.3f} | {r['delta_pct']:+.2f} % | {r['kl']:.4f} | "
                         f"{100 * r['top1']:.1f} % | {r['file_bytes'] / 1e6:.1f} | {r['quantize_s']:.0f} |" if "file_bytes" in r
                         else f"| {name} | {r['perplexity']:.3f} | reference | | | | |")
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in results["targets"]]
    replace_section("bench_quant", lines, "## Quantization (`benchmarks/bench_quant.py`)\n\nThe embedded model "
                    "quantized by lmforge, against lmforge float32 measured in the same run.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality", "all", "report"], default="all",
                        help="what to measure; 'report' rewrites the tables from the last JSON")
    parser.add_argument("--tokens", type=int, default=8192, help="WikiText-2 tokens to score (8192)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_quant.json"))
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    if args.part == "report" and not previous:
        sys.exit(f"{out}: no earlier results to report")
    results = {"date": previous["date"] if args.part == "report" else date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "decode_tokens": args.decode, "repeats": args.repeats,
               "speed": previous.get("speed"), "quality": previous.get("quality")}
    if args.part in ("speed", "all"):
        console.print("[dim]measuring speed of each variant in turn ...[/dim]")
        results["speed"] = speed(args.repeats, args.decode)
        table = Table(title="Decode and prefill speed against lmforge float32 (same run)")
        for col in ("variant", "decode tok/s", "vs fp32", "prefill tok/s", "vs fp32", "weights MB", "vs fp32"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, r in results["speed"].items():
            table.add_row(name, f"{r['decode_tokens_per_s']:.1f}", f"{r['decode_vs_fp32']:.2f}x",
                          f"{r['prefill_tokens_per_s']:.0f}", f"{r['prefill_vs_fp32']:.2f}x",
                          f"{r['weight_bytes'] / 1e6:.1f}", f"{r['memory_vs_fp32']:.3f}x")
        console.print(table)
    if args.part in ("quality", "all"):
        console.print("[dim]quantizing and scoring each variant ...[/dim]")
        results["quality"] = quality(args.tokens)
        table = Table(title=f"WikiText-2 test, {results['quality']['tokens_scored']} tokens, against float32")
        for col in ("variant", "perplexity", "delta", "KL", "top-1", "quantize s"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, r in results["quality"]["variants"].items():
            table.add_row(name, f"{r['perplexity']:.3f}", f"{r['delta_pct']:+.2f} %", f"{r['kl']:.4f}",
                          f"{100 * r['top1']:.1f} %", f"{r.get('quantize_s', 0):.0f}")
        console.print(table)
    results["targets"] = targets(results["speed"], results["quality"])
    table = Table(title="Targets")
    for col in ("target", "measured", "met"):
        table.add_column(col)
    for t, m, ok in results["targets"]:
        table.add_row(t, m, "[green]yes[/green]" if ok else "[red]no[/red]")
    console.print(table)
    write_results_section(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
