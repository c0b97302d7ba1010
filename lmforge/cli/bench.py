"""`lmforge bench serve` (a load generator for any OpenAI-compatible server) and `lmforge bench
offline` (the engine's own speed on one variant)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lmforge.cli.common import emit, err, ms, number_list
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="measure: a server under load (serve) or the engine itself (offline)")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")

    p = kinds.add_parser("serve", help="load generator for any OpenAI-compatible server (lmforge, vLLM, llama.cpp)",
                         description="Closed-loop concurrency levels or open-loop Poisson arrival rates against "
                                     "an OpenAI-compatible server; streaming; TTFT, TPOT, ITL, end-to-end latency, "
                                     "throughput, goodput against SLOs, errors by kind.")
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="the model name the server expects (default: the first it lists)")
    p.add_argument("--concurrency", default=None, help="closed loop: concurrent clients per level, e.g. 1,2,4,8")
    p.add_argument("--rate", default=None, help="open loop: Poisson arrivals per second per level, e.g. 1,2,4")
    p.add_argument("--num-requests", type=int, default=None,
                   help="requests per level (default: 4 per client, or ~20 s of arrivals)")
    p.add_argument("--max-concurrency", type=int, default=None, help="open loop: cap on requests in flight")
    p.add_argument("--endpoint", default="completions", choices=["completions", "chat"])
    p.add_argument("--prompt-tokens", type=int, default=128, help="random prompts of about this many tokens (128)")
    p.add_argument("--prompts-file", default=None, help="prompts from a file, one per line, instead of random ones")
    p.add_argument("--tokenizer", default=None, help="model whose tokenizer makes random prompts (embedded one)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM/lmforge/llama.cpp)")
    p.add_argument("--slo", default=None, help="goodput objectives, e.g. ttft=500ms,tpot=50ms,e2e=5s")
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")
    p.add_argument("--warmup", type=int, default=1, help="requests sent first and not recorded (1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None, help="name of this run in reports (default: the model name)")
    p.add_argument("--out", default=None, help="JSON file with every request's record (rewritten after each level)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_serve)

    p = kinds.add_parser("offline", help="prefill and decode speed, TTFT, TPOT, peak memory of one model variant",
                         description="The engine's own speed (no server) on one variant, and with --device what "
                                     "that device profile predicts for it.")
    p.add_argument("model", nargs="?", default=None, help="model (default: the embedded smollm2-135m)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "int4"],
                   help="torch: fp32/bf16 dtypes, int8/int4 RTN in memory; onnxruntime: fp32/int8/int4 export")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="device profile (file or shipped name) to predict with")
    p.add_argument("--label", default=None)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_offline)


def print_serve_levels(out, result: dict) -> None:
    table = Table(title=f"{result['model']} at {result['url']} ({result['endpoint']}, max_tokens {result['max_tokens']})")
    cols = [result["mode"], "ok/sent", "req/s", "out tok/s", "TTFT p50", "p90", "p99", "TPOT p50", "p99",
            "ITL p50", "E2E p50", "p99", "goodput", "CPU", "errors"]
    for c in cols:
        table.add_column(c, justify="left" if c == "errors" else "right")
    for level in result["levels"]:
        s, r = level["summary"], level["resources"]
        good = f"{s['goodput']:.2f}/s" if "goodput" in s else "-"
        cpu = f"{r['cpu_utilization_mean']:.0%}" if "cpu_utilization_mean" in r else "-"
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or ""
        table.add_row(f"{level['value']:g}", f"{s['completed']}/{s['requests']}", f"{s['request_throughput']:.2f}",
                      f"{s['output_token_throughput']:.1f}", ms(s["ttft_s"], "p50"), ms(s["ttft_s"], "p90"),
                      ms(s["ttft_s"], "p99"), ms(s["tpot_s"], "p50"), ms(s["tpot_s"], "p99"),
                      ms(s["itl_s"], "p50"), ms(s["e2e_s"], "p50"), ms(s["e2e_s"], "p99"), good, cpu, errors)
    out.print(table)
    out.print("[dim]latencies in ms; TPOT excludes the first token; goodput: requests/s meeting "
              f"{result['slo'] or 'no SLO given'}[/dim]")


def run_serve(args) -> int:
    from lmforge.bench.loadgen import LoadSpec, check_reachable, file_prompts, random_prompts
    from lmforge.bench.serve_bench import run_serve_bench
    from lmforge.bench.slo import parse_slo

    if (args.concurrency is None) == (args.rate is None):
        raise LmforgeError("give --concurrency LEVELS or --rate LEVELS (one of them)")
    concurrencies = number_list(args.concurrency, "--concurrency", int) if args.concurrency else None
    rates = number_list(args.rate, "--rate") if args.rate else None
    slo = parse_slo(args.slo) if args.slo else None
    if args.num_requests is not None and args.num_requests < 1:
        raise LmforgeError("--num-requests must be at least 1")
    if args.out and Path(args.out).is_dir():
        raise LmforgeError(f"--out {args.out}: is a folder; give a file name for the JSON")
    served = check_reachable(args.url, args.api_key)
    if args.model is None:
        if not served:
            raise LmforgeError(f"{args.url} lists no models at /v1/models; give --model")
        args.model = served[0]
    if args.prompts_file:
        prompts, source = file_prompts(args.prompts_file), f"file {args.prompts_file}"
    else:
        from lmforge.api import load_tokenizer
        from lmforge.bench.serve_bench import level_requests

        # one prompt per request (warm-up included): repeated greedy prompts could be served from a cache
        count = sum(level_requests("concurrency" if concurrencies else "rate", concurrencies or rates,
                                   args.num_requests)) + args.warmup
        prompts = random_prompts(load_tokenizer(args.tokenizer), count, args.prompt_tokens, args.seed)
        source = f"random, {args.prompt_tokens} tokens ({args.tokenizer or 'smollm2-135m'} tokenizer)"
    spec = LoadSpec(args.url, args.model, prompts, args.max_tokens, args.endpoint, args.temperature,
                    args.ignore_eos, args.api_key, args.timeout)
    result = run_serve_bench(spec, concurrencies, rates, args.num_requests, args.warmup, slo, args.seed,
                             args.max_concurrency, out=args.out, prompt_source=source, show_progress=not args.json,
                             label=args.label)
    emit(result, args.json, print_serve_levels, args.out)
    failed = sum(level["summary"]["failed"] for level in result["levels"])
    sent = sum(level["summary"]["requests"] for level in result["levels"])
    if failed:
        kinds = {}
        for level in result["levels"]:
            for kind, n in level["summary"]["errors"].items():
                kinds[kind] = kinds.get(kind, 0) + n
        first = next(r for level in result["levels"] for r in level["records"] if not r["ok"])
        err.print(f"[red]error:[/red] {failed} of {sent} requests failed ("
                  + ", ".join(f"{k}: {v}" for k, v in kinds.items()) + f"); first: {first['error_detail']}"
                  + (f"; the records are in {args.out}" if args.out else ""))
        return 1
    return 0


def print_offline(out, result: dict) -> None:
    table = Table(title=f"{result['label']}: {result['prompt_tokens']}-token prefill, {result['decode_tokens']} decoded "
                        f"tokens, median of {result['repeats']}")
    for c in ("", "prefill tok/s", "decode tok/s", "TTFT ms", "TPOT ms", "peak memory MB", "weights MB"):
        table.add_column(c, justify="left" if not c else "right")
    table.add_row("measured", f"{result['prefill_tokens_per_s']:.0f}", f"{result['decode_tokens_per_s']:.1f}",
                  f"{result['ttft_s'] * 1e3:.0f}", f"{result['tpot_s'] * 1e3:.1f}",
                  f"{result['peak_memory_bytes'] / 1e6:.0f}",
                  f"{result['weight_bytes'] / 1e6:.0f}" if result.get("weight_bytes") else "-")
    p = result.get("prediction")
    if p:
        table.add_row(f"predicted ({p['profile']}, {p['basis']})", f"{p['prefill_tokens_per_s']:.0f}",
                      f"{p['decode_tokens_per_s']:.1f}", f"{p['prefill_s'] * 1e3:.0f}",
                      f"{p['decode_s_per_token'] * 1e3:.1f}", "", f"{p['weight_bytes_per_token'] / 1e6:.0f}")
        table.add_row("prediction error", f"{p['prefill_error']:+.0%}", f"{p['decode_error']:+.0%}", "", "", "", "")
    out.print(table)


def run_offline(args) -> int:
    from lmforge.bench.offline import bench_variant

    result = bench_variant(args.model, args.backend, args.precision, args.prompt_tokens, args.decode_tokens,
                           args.repeats, args.device, args.label, args.out)
    emit(result, args.json, print_offline, args.out)
    return 0
