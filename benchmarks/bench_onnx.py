"""lmforge's ONNX exports against onnxruntime-genai and against lmforge's PyTorch backend, in one run.

References built and measured in the same run: onnxruntime-genai's INT4 model of the same
checkpoint (its own model builder, `-p int4 -e cpu`), and lmforge's float32 PyTorch backend.
Speed: decode tokens/s (128 greedy tokens after a 32-token prompt) and prefill tokens/s (512-token
prompt), every runner measured in turn in one process, medians of 5 after warm-up. Parity:
float32 logits and greedy continuations against PyTorch; INT4 against lmforge's INT4 PyTorch model.
Quality: WikiText-2 perplexity of each model, the genai one included (run through ONNX Runtime).
Prints tables, writes benchmarks/out/bench_onnx.json and its section of benchmarks/RESULTS.md.

    pip install onnxruntime-genai onnx-ir   # the reference (pip install -e ".[bench]")
    .venv/bin/python benchmarks/bench_onnx.py [--tokens 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_md import replace_section  # noqa: E402
WIKITEXT = HERE.parents[1] / "shared" / "data" / "wikitext2_test.txt"
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are"]


def _median(values):
    return sorted(values)[len(values) // 2]


def build_genai(hf_folder: Path, out: Path) -> float:
    """onnxruntime-genai's INT4 model of the same weights, by its own builder; returns seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m",
                           "HuggingFaceTB/SmolLM2-135M-Instruct", "-i", str(hf_folder), "-o", str(out), "-p", "int4",
                           "-e", "cpu", "-c", str(out.parent / "genai-cache")], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"onnxruntime-genai's builder failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


class GenaiRunner:
    """Greedy decoding with onnxruntime-genai's own generator loop."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(folder))

    def run(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        """(seconds to process the prompt and give the first token, seconds per later token)."""
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new_tokens + 1, do_sample=False)
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)
        generator.generate_next_token()
        first = time.perf_counter()
        count = 0
        while count < new_tokens - 1 and not generator.is_done():
            generator.generate_next_token()
            count += 1
        return first - start, (time.perf_counter() - first) / max(count, 1)


class GenaiLogits:
    """The genai model file under plain ONNX Runtime, as a model `evaluate` can score (no cache)."""

    def __init__(self, folder: Path, config):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.config = config

    def __call__(self, tokens, positions, cache=None, last_only=False):
        import numpy as np
        import torch

        c = self.config
        batch, length = tokens.shape
        feed = {"input_ids": tokens.numpy(), "attention_mask": np.ones((batch, length), dtype=np.int64)}
        empty = np.zeros((batch, c.num_kv_heads, 0, c.head_dim), dtype=np.float32)
        for i in range(c.num_layers):
            feed[f"past_key_values.{i}.key"] = feed[f"past_key_values.{i}.value"] = empty
        logits = torch.from_numpy(self.session.run(["logits"], feed)[0])
        return logits[:, -1:] if last_only else logits


def prepare(work: Path) -> dict:
    from lmforge.loading import load_checkpoint
    from lmforge.onnx.export import export_onnx
    from lmforge.quant.workflow import quantize_to_folder
    from lmforge.quant.recipe import QuantRecipe

    hf_folder = load_checkpoint(None).tokenizer_dir  # the GGUF converted to a Hugging Face folder
    seconds = {}
    for name, kwargs in (("fp32", {}), ("int8", {"precision": "int8"}), ("int4", {"precision": "int4"})):
        start = time.perf_counter()
        export_onnx(None, work / f"lmforge-{name}", show_progress=False, **kwargs)
        seconds[f"lmforge {name} export"] = time.perf_counter() - start
    seconds["genai int4 build"] = build_genai(hf_folder, work / "genai-int4")
    # lmforge's INT4 PyTorch model of the same recipe, and its export at both accuracy levels.
    _, _, quantized = quantize_to_folder(None, QuantRecipe("rtn", 4, "group", 32), work / "torch-int4",
                                         show_progress=False)
    export_onnx(quantized, work / "lmforge-int4-exact", accuracy_level=0, show_progress=False)
    export_onnx(quantized, work / "lmforge-int4-from-torch", show_progress=False)
    return seconds


def speed(work: Path, repeats: int, decode_tokens: int) -> dict:
    import torch

    import lmforge
    from lmforge import SamplingParams

    generator = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(100, 49000, (512,), generator=generator).tolist()
    short_prompt = long_prompt[:32]
    decode_params = SamplingParams(temperature=0, max_tokens=decode_tokens, ignore_eos=True)
    prefill_params = SamplingParams(temperature=0, max_tokens=1)
    engines = {"lmforge pytorch fp32": lmforge.load(None, "float32"),
               "lmforge onnx fp32": lmforge.load(work / "lmforge-fp32"),
               "lmforge onnx int8": lmforge.load(work / "lmforge-int8"),
               "lmforge onnx int4": lmforge.load(work / "lmforge-int4")}
    engines = {k: lm.engine(max_batch=1, max_seq_len=512 + decode_tokens + 8) for k, lm in engines.items()}
    genai = GenaiRunner(work / "genai-int4")

    def measure(name):
        if name == "onnxruntime-genai int4":
            _, tpot = genai.run(short_prompt, decode_tokens)
            ttft, _ = genai.run(long_prompt, 1)
            return tpot, ttft
        engine = engines[name]
        return (engine.generate([short_prompt], decode_params)[0].tpot_s,
                engine.generate([long_prompt], prefill_params)[0].ttft_s)

    names = [*engines, "onnxruntime-genai int4"]
    for name in names:  # warm up: the first calls are slower
        for _ in range(2):
            measure(name)
    samples = {name: {"tpot": [], "prefill": []} for name in names}
    for _ in range(repeats):
        for name in names:
            tpot, ttft = measure(name)
            samples[name]["tpot"].append(tpot)
            samples[name]["prefill"].append(ttft)
    results = {}
    for name in names:
        tpot, ttft = _median(samples[name]["tpot"]), _median(samples[name]["prefill"])
        results[name] = {"tpot_s": tpot, "decode_tokens_per_s": 1 / tpot, "prefill_tokens_per_s": 512 / ttft,
                         "samples": samples[name]}
    return results


def parity(work: Path) -> dict:
    import torch

    import lmforge
    from lmforge import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)

    def greedy(lm):
        return [c.token_ids for c in lm.engine(max_batch=4, max_seq_len=256).generate(PROMPTS, params)]

    def first_difference(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))

    torch_fp32, onnx_fp32 = lmforge.load(None, "float32"), lmforge.load(work / "lmforge-fp32")
    ids = torch_fp32.tokenizer.encode(WIKITEXT.read_text(encoding="utf-8")[:2000])[:256]
    tokens, positions = torch.tensor([ids]), torch.arange(len(ids))[None]
    with torch.no_grad():
        max_diff = float((torch_fp32.model(tokens, positions) - onnx_fp32.model(tokens, positions)).abs().max())
    fp32_same = sum(a == b for a, b in zip(greedy(torch_fp32), greedy(onnx_fp32)))
    int4_exact_ref = greedy(lmforge.load(work / "torch-int4", "float32"))
    int4_exact = greedy(lmforge.load(work / "lmforge-int4-exact"))
    int4_fast_ref = greedy(lmforge.load(work / "torch-int4"))
    int4_fast = greedy(lmforge.load(work / "lmforge-int4-from-torch"))
    return {"prompts": len(PROMPTS), "tokens": 64, "fp32_max_abs_logit_diff": max_diff,
            "fp32_identical_continuations": fp32_same,
            "int4_exact_identical_continuations": sum(a == b for a, b in zip(int4_exact_ref, int4_exact)),
            "int4_default_first_difference": [first_difference(a, b) for a, b in zip(int4_fast_ref, int4_fast)]}


def quality(work: Path, tokens: int) -> dict:
    import lmforge
    from lmforge.evaluate import evaluate

    reference = lmforge.load(None, "float32")
    ids = reference.tokenizer.encode(WIKITEXT.read_text(encoding="utf-8"), add_special_tokens=False)[:tokens]
    models = {"lmforge pytorch fp32": reference.model, "lmforge onnx fp32": lmforge.load(work / "lmforge-fp32").model,
              "lmforge onnx int8": lmforge.load(work / "lmforge-int8").model,
              "lmforge onnx int4": lmforge.load(work / "lmforge-int4").model,
              "onnxruntime-genai int4": GenaiLogits(work / "genai-int4", reference.config)}
    results = {}
    for name, model in models.items():
        print(f"  scoring {name} ...", file=sys.stderr, flush=True)
        scored = evaluate(model, ids, 512, 256, show_progress=False)
        results[name] = {"perplexity": scored.perplexity, "tokens_scored": scored.tokens_scored}
    base = results["lmforge pytorch fp32"]["perplexity"]
    for r in results.values():
        r["delta_pct"] = 100 * (r["perplexity"] / base - 1)
    return results


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))


def targets(results: dict) -> list[tuple[str, str, bool]]:
    s, p = results["speed"], results["parity"]
    int4_ratio = s["lmforge onnx int4"]["decode_tokens_per_s"] / s["onnxruntime-genai int4"]["decode_tokens_per_s"]
    fp32_ratio = s["lmforge onnx fp32"]["decode_tokens_per_s"] / s["lmforge pytorch fp32"]["decode_tokens_per_s"]
    n = p["prompts"]
    return [("float32 logits within 1e-3 of PyTorch", f"{p['fp32_max_abs_logit_diff']:.1e}",
             p["fp32_max_abs_logit_diff"] <= 1e-3),
            ("float32: identical greedy continuations of 64 tokens", f"{p['fp32_identical_continuations']}/{n}",
             p["fp32_identical_continuations"] == n),
            ("INT4 export agrees with lmforge's INT4 PyTorch model (same arithmetic: float32 activations)",
             f"{p['int4_exact_identical_continuations']}/{n}", p["int4_exact_identical_continuations"] == n),
            ("INT4 decode >= 1.1x onnxruntime-genai INT4", f"{int4_ratio:.2f}x", int4_ratio >= 1.1),
            ("float32 ONNX decode >= 1.2x lmforge float32 PyTorch", f"{fp32_ratio:.2f}x", fp32_ratio >= 1.2)]


def write_results_section(results: dict) -> None:
    s = results["speed"]
    genai = s["onnxruntime-genai int4"]["decode_tokens_per_s"]
    torch_fp32 = s["lmforge pytorch fp32"]["decode_tokens_per_s"]
    lines = [f"Measured {results['date']} on {results['machine']}; onnxruntime {results['versions']['onnxruntime']}, "
             f"onnxruntime-genai {results['versions']['onnxruntime_genai']}. References in the same run: "
             f"onnxruntime-genai's INT4 model (its builder, `-p int4 -e cpu`: INT4 g32 everywhere, INT4 head) and "
             f"lmforge's float32 PyTorch backend. lmforge INT4: RTN g32 symmetric, INT8 head; INT8: RTN per "
             f"channel; both MatMulNBits at accuracy level 4 (INT8 activations per block). Greedy, {results['decode_tokens']} tokens decoded after a 32-token prompt, "
             f"512-token prefill, medians of {results['repeats']}.", "",
             "| model | decode tok/s | vs genai INT4 | vs PyTorch fp32 | prefill tok/s | weights MB | "
             "WikiText-2 ppl | delta |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in s.items():
        q = results["quality"].get(name, {})
        size = results["sizes_mb"].get(name)
        lines.append(f"| {name} | {r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / genai:.2f}x | "
                     f"{r['decode_tokens_per_s'] / torch_fp32:.2f}x | {r['prefill_tokens_per_s']:.0f} | "
                     f"{size:.0f} | {q.get('perplexity', float('nan')):.3f} | {q.get('delta_pct', 0):+.2f} % |"
                     if size else
                     f"| {name} | {r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / genai:.2f}x | "
                     f"{r['decode_tokens_per_s'] / torch_fp32:.2f}x | {r['prefill_tokens_per_s']:.0f} | | "
                     f"{q.get('perplexity', float('nan')):.3f} | reference |")
    p = results["parity"]
    lines += ["", f"Parity: max |logit difference| float32 ONNX vs PyTorch {p['fp32_max_abs_logit_diff']:.1e}; "
                  f"INT4 at accuracy level 4 (INT8 activations) against lmforge's INT4 PyTorch model (bfloat16 "
                  f"activations): first differing token of each prompt {p['int4_default_first_difference']} of 64.",
              "", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in results["targets"]]
    replace_section("bench_onnx", lines, "## ONNX export and ONNX Runtime (`benchmarks/bench_onnx.py`)\n\nlmforge's "
                    "exports of the embedded model run by its ONNX Runtime backend, against onnxruntime-genai and "
                    "lmforge's PyTorch backend measured in the same run.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="WikiText-2 tokens to score (4096)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--out", default=str(HERE / "out" / "bench_onnx.json"))
    args = parser.parse_args()
    try:
        import onnxruntime
        import onnxruntime_genai
    except ImportError:
        sys.exit("the reference needs onnxruntime-genai: pip install onnxruntime-genai onnx-ir")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    results = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "versions": {"onnxruntime": onnxruntime.__version__, "onnxruntime_genai": onnxruntime_genai.__version__},
               "decode_tokens": args.decode, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        console.print("[dim]exporting (lmforge) and building (onnxruntime-genai) ...[/dim]")
        results["build_s"] = prepare(work)
        results["sizes_mb"] = {"lmforge onnx fp32": folder_bytes(work / "lmforge-fp32") / 1e6,
                               "lmforge onnx int8": folder_bytes(work / "lmforge-int8") / 1e6,
                               "lmforge onnx int4": folder_bytes(work / "lmforge-int4") / 1e6,
                               "onnxruntime-genai int4": folder_bytes(work / "genai-int4") / 1e6}
        console.print("[dim]measuring speed of each model in turn ...[/dim]")
        results["speed"] = speed(work, args.repeats, args.decode)
        console.print("[dim]checking parity ...[/dim]")
        results["parity"] = parity(work)
        console.print("[dim]scoring WikiText-2 ...[/dim]")
        results["quality"] = quality(work, args.tokens)
    results["targets"] = targets(results)

    table = Table(title="Decode, prefill and quality (same run)")
    for col in ("model", "decode tok/s", "vs genai", "vs pytorch fp32", "prefill tok/s", "weights MB", "ppl"):
        table.add_column(col, justify="left" if col == "model" else "right")
    genai = results["speed"]["onnxruntime-genai int4"]["decode_tokens_per_s"]
    base = results["speed"]["lmforge pytorch fp32"]["decode_tokens_per_s"]
    for name, r in results["speed"].items():
        size = results["sizes_mb"].get(name)
        table.add_row(name, f"{r['decode_tokens_per_s']:.1f}", f"{r['decode_tokens_per_s'] / genai:.2f}x",
                      f"{r['decode_tokens_per_s'] / base:.2f}x", f"{r['prefill_tokens_per_s']:.0f}",
                      f"{size:.0f}" if size else "", f"{results['quality'][name]['perplexity']:.3f}")
    console.print(table)
    checks = Table(title="Targets")
    for col in ("target", "measured", "met"):
        checks.add_column(col)
    for t, m, ok in results["targets"]:
        checks.add_row(t, m, "yes" if ok else "[red]no[/red]")
    console.print(checks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    write_results_section(results)
    console.print(f"[dim]wrote {out} and benchmarks/RESULTS.md[/dim]")


if __name__ == "__main__":
    main()
