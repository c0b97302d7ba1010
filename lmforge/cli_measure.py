"""The measuring commands of `lmforge`: bench serve, bench offline, probe, report, deploy."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lmforge.bench.slo import SEED_DEFAULTS
from lmforge.errors import LmforgeError


def _number_list(text: str, name: str, cast=float) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LmforgeError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise LmforgeError(f"{name}: give positive numbers, e.g. 1,2,4")
    return values


def _ms(d: dict | None, key: str) -> str:
    return "-" if not d else f"{d[key] * 1e3:.0f}"


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
                      f"{s['output_token_throughput']:.1f}", _ms(s["ttft_s"], "p50"), _ms(s["ttft_s"], "p90"),
                      _ms(s["ttft_s"], "p99"), _ms(s["tpot_s"], "p50"), _ms(s["tpot_s"], "p99"),
                      _ms(s["itl_s"], "p50"), _ms(s["e2e_s"], "p50"), _ms(s["e2e_s"], "p99"), good, cpu, errors)
    out.print(table)
    out.print("[dim]latencies in ms; TPOT excludes the first token; goodput: requests/s meeting "
              f"{result['slo'] or 'no SLO given'}[/dim]")


def cmd_bench_serve(args) -> int:
    from lmforge.bench.loadgen import LoadSpec, check_reachable, file_prompts, random_prompts
    from lmforge.bench.serve_bench import run_serve_bench
    from lmforge.bench.slo import parse_slo
    from lmforge.cli import _print_json, err, out

    if (args.concurrency is None) == (args.rate is None):
        raise LmforgeError("give --concurrency LEVELS or --rate LEVELS (one of them)")
    concurrencies = _number_list(args.concurrency, "--concurrency", int) if args.concurrency else None
    rates = _number_list(args.rate, "--rate") if args.rate else None
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
    if args.json:
        _print_json(result)
    else:
        print_serve_levels(out, result)
        if args.out:
            out.print(f"wrote {args.out}")
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


OFFLINE_RECIPES = {"int8": ("rtn", 8, "channel", 128), "int4": ("rtn", 4, "group", 128)}


def load_variant(model, backend: str, precision: str):
    """(LoadedModel, resident weight bytes) of a model at a precision on a backend.

    torch: fp32/bf16 as dtypes, int8/int4 quantized in memory with RTN (per channel / groups of 128);
    onnxruntime: exported once into the cache at fp32/int8/int4 (an export folder runs as it is)."""
    import lmforge
    from lmforge.loading import default_cache_dir
    from lmforge.onnx.export import cached_export, export_bytes, is_onnx_export

    if is_onnx_export(model):
        lm = lmforge.load(model)
        return lm, export_bytes(Path(model))
    if backend == "onnxruntime":
        if precision == "bf16":
            raise LmforgeError("the onnxruntime backend runs fp32, int8 or int4; bf16 runs on --backend torch")
        folder = cached_export(model, default_cache_dir(), precision)
        return lmforge.load(folder), export_bytes(folder)
    from lmforge.quant.workflow import weight_bytes

    if precision in OFFLINE_RECIPES:
        import tempfile

        from lmforge.quant.recipe import QuantRecipe
        from lmforge.quant.workflow import quantize_to_folder

        from lmforge.loading import load_checkpoint

        if load_checkpoint(model).quantization is not None:
            lm = lmforge.load(model)  # already quantized: run it as it is
            return lm, weight_bytes(lm.model)
        with tempfile.TemporaryDirectory(prefix="lmforge-offline-") as scratch:
            # saved and loaded again, so it runs exactly as a quantized folder does
            _, _, folder = quantize_to_folder(model, QuantRecipe(*OFFLINE_RECIPES[precision]), Path(scratch) / "q",
                                              show_progress=False)
            lm = lmforge.load(folder)
        return lm, weight_bytes(lm.model)
    lm = lmforge.load(model, {"fp32": "float32", "bf16": "bfloat16"}[precision])
    return lm, weight_bytes(lm.model)


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


def cmd_bench_offline(args) -> int:
    from lmforge.atomic import write_json
    from lmforge.bench.offline import run_offline_bench
    from lmforge.cli import _print_json, out
    from lmforge.device.profile import load_profile
    from lmforge.progress import status

    if args.prompt_tokens < 1 or args.decode_tokens < 2 or args.repeats < 1:
        raise LmforgeError("--prompt-tokens >= 1, --decode-tokens >= 2 and --repeats >= 1")
    profile = load_profile(args.device) if args.device else None
    with status(f"loading {args.model or 'smollm2-135m'} ({args.backend} {args.precision})"):
        lm, weights = load_variant(args.model, args.backend, args.precision)
    with status("measuring prefill and decode"):
        result = run_offline_bench(lm, args.prompt_tokens, args.decode_tokens, args.repeats, profile, args.label,
                                   weights)
    if args.out:
        write_json(args.out, result)
    if args.json:
        _print_json(result)
    else:
        print_offline(out, result)
        if args.out:
            out.print(f"wrote {args.out}")
    return 0


def cmd_probe(args) -> int:
    from lmforge.cli import _print_json, out
    from lmforge.device.probe import probe
    from lmforge.device.profile import save_profile
    from lmforge.progress import console

    sizes = {"rows": (256, 1024, 4096), "stream_bytes": 48 * 2**20} if args.quick else {}
    repeats = min(args.repeats, 2) if args.quick else args.repeats
    with console.status("probing") as spinner:
        profile = probe(args.name, repeats, on_step=lambda s: spinner.update(f"probing: {s}"), **sizes)
    if args.out:
        save_profile(profile, args.out)
    if args.json:
        _print_json(profile.to_dict())
        return 0
    print_profile(out, profile)
    if args.out:
        out.print(f"wrote {args.out}")
    return 0


def print_profile(out, profile) -> None:
    from lmforge.plan import format_bytes

    out.print(f"[bold]{profile.name}[/bold]: memory {format_bytes(profile.memory_bytes)}, memory bandwidth "
              f"{profile.memory_bandwidth / 1e9:.1f} GB/s" + (f" ({profile.description})" if profile.description else ""))
    table = Table()
    for c in ("kernels", "one-row product GB/s by matrix size", "prefill GFLOP/s", "step + per-layer fixed cost"):
        table.add_column(c)
    for key, r in profile.kernels.items():
        curve = ", ".join(f"{b / 2**20:.1f} MiB: {bw / 1e9:.1f}" for b, bw in r.stream)
        fixed = f"{(r.step_s or 0) * 1e3:.2f} ms + {(r.layer_s or 0) * 1e3:.3f} ms/layer"
        table.add_row(key, curve, f"{r.compute / 1e9:.0f}" if r.compute else "-", fixed)
    if not profile.kernels:
        for precision, flops in profile.compute.items():
            table.add_row(precision, "-", f"{flops / 1e9:.0f}", "-")
    out.print(table)


def cmd_report(args) -> int:
    from lmforge.bench.slo import parse_slo
    from lmforge.cli import out
    from lmforge.device.profile import load_profile
    from lmforge.report.render import write_report
    from lmforge.report.results import load_results

    slo = parse_slo(args.slo or SEED_DEFAULTS)
    device_memory = load_profile(args.device).memory_bytes if args.device else None
    from lmforge.atomic import require_free_folder

    require_free_folder(args.out)
    results = load_results(args.results)
    folder = write_report(results, args.out, args.title, slo, device_memory)
    out.print(f"wrote {folder / 'report.html'} and {folder / 'report.md'} "
              f"({len(results.sources)} result file(s))")
    return 0


def cmd_deploy(args) -> int:
    from lmforge.cli import out
    from lmforge.deploy.pipeline import Deploy, DeploySettings

    settings = DeploySettings(model=args.model, out=args.out, device=args.device, slo=args.slo,
                              concurrency=_number_list(args.concurrency, "--concurrency", int),
                              precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
                              precision=args.precision, method=args.method, context=args.context,
                              prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, eval_text=args.eval_text,
                              eval_tokens=args.eval_tokens)
    deploy = Deploy(settings, console=out)
    try:
        outcomes = deploy.run()
    finally:
        table = Table(title=f"lmforge deploy -> {args.out}")
        for c in ("stage", "status", "seconds", "result"):
            table.add_column(c, justify="right" if c == "seconds" else "left")
        for o in deploy.runner.outcomes:
            table.add_row(o.name, o.status, f"{o.seconds:.0f}", o.summary)
        out.print(table)
    report = next(o for o in outcomes if o.name == "report").data
    for line in report.get("checklist", []):
        verdict = "[green]pass[/green]" if line["passed"] else "[dim]not measured[/dim]" \
            if line["passed"] is None else "[red]FAIL[/red]"
        out.print(f"  {verdict}  {line['objective']}: {line['measured']}")
    return 0


def add_commands(sub) -> None:
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
    p.set_defaults(func=cmd_bench_serve)

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
    p.set_defaults(func=cmd_bench_offline)

    p = sub.add_parser("report", help="an HTML page (and Markdown) with plots and the SLO checklist from results",
                       description="Reads JSON results (bench serve/offline --out, compare.json, device profiles, "
                                   "deploy folders) and writes report.html (self-contained), report.md and PNGs.")
    p.add_argument("results", nargs="+", help="result files or folders holding them")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the report")
    p.add_argument("--slo", default=None, help="checklist objectives (default: the seed's "
                                               "ttft=500ms,tps=20,utilization=70%%,memory=80%%)")
    p.add_argument("--device", default=None, help="device profile whose memory the memory line is judged against")
    p.add_argument("--title", default="lmforge deployment report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("deploy", help="inspect, plan, quantize, export, evaluate, benchmark and report, resumably",
                       description="The whole deployment loop in one command. Each finished stage is saved in "
                                   "OUT; running the same command again resumes after the last finished stage.")
    p.add_argument("model", nargs="?", default=None, help="model (default: the embedded smollm2-135m)")
    p.add_argument("--device", default=None, help="device profile (file or shipped name, e.g. accelerator-8gb); "
                                                   "default: probe this machine")
    p.add_argument("--slo", default=SEED_DEFAULTS,
                   help="objectives (default: the seed's checklist ttft=500ms,tps=20,utilization=70%%,memory=80%%)")
    p.add_argument("--out", default="deploy", help="output folder (default: ./deploy); rerun to resume")
    p.add_argument("--concurrency", default="1,2,4", help="load levels of the served benchmark (1,2,4)")
    p.add_argument("--precisions", default="fp32,int8,int4", help="candidates, most accurate first")
    p.add_argument("--precision", default=None, choices=["fp32", "int8", "int4"], help="deploy this one; skip choosing")
    p.add_argument("--method", default="rtn", choices=["rtn", "gptq", "awq"], help="INT4 quantization method")
    p.add_argument("--context", type=int, default=2048, help="context per sequence the memory plan reserves")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--eval-text", default=None, help="text to measure quality on (default: the shipped text)")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("probe", help="measure this machine's memory, bandwidth and compute into a device profile")
    p.add_argument("--out", default=None, help="write the profile (JSON) here")
    p.add_argument("--name", default=None, help="the profile's name (default: this host's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller matrices, fewer repeats (faster, less faithful)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)
