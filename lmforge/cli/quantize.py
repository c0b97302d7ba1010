"""`lmforge quantize` (one method, saved) and `lmforge compare` (the seed's experiment)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import err, out, print_json, read_text_arg
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model (rtn, llm-int8, gptq, awq, smoothquant) and save it")
    p.add_argument("model", nargs="?", default=None, help="model to quantize (default: the embedded one)")
    p.add_argument("--method", required=True, help="rtn, llm-int8, gptq, awq or smoothquant")
    p.add_argument("--bits", type=int, default=8, help="weight bits: 8 or 4 (default 8)")
    p.add_argument("--group-size", type=int, default=None,
                   help="input columns per scale (32, 64, 128, 256); default: 128 for 4-bit, per channel for 8-bit")
    p.add_argument("--granularity", choices=["tensor", "channel", "group"], default=None,
                   help="weight scales per tensor, per output channel or per group")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", action="store_true", help="symmetric weights (default)")
    sym.add_argument("--asym", action="store_true", help="asymmetric weights (scale and zero point)")
    p.add_argument("--activations", choices=["token", "tensor"], default=None,
                   help="also quantize activations to INT8 at run time (W8A8), per token or per tensor")
    p.add_argument("--head", choices=["int8", "int4", "float"], default="int8",
                   help="output layer (and tied embedding): INT8 per channel (default), INT4 in groups of 128, "
                        "or kept in float")
    p.add_argument("--calib", default=None, help="calibration text file (default: the text lmforge ships)")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration sequences (32)")
    p.add_argument("--calib-tokens", type=int, default=512, help="tokens per calibration sequence (512)")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: Hessian damping (0.01)")
    p.add_argument("--no-desc-act", dest="desc_act", action="store_false",
                   help="gptq: quantize columns in their natural order instead of act-order")
    p.add_argument("--awq-grid", type=int, default=20, help="awq: scale-exponent grid points (20)")
    p.add_argument("--alpha", type=float, default=0.5, help="smoothquant: migration strength (0.5)")
    p.add_argument("--threshold", type=float, default=6.0, help="llm-int8: outlier threshold (6.0)")
    p.add_argument("--out", required=True, help="new folder for the quantized model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_quantize)

    p = sub.add_parser("compare", help="the same model at several precisions: size, memory, speed, quality, answers")
    p.add_argument("model", nargs="?", default=None, help="model (default: the embedded one)")
    p.add_argument("--variants", default="fp32,bf16,int8,int4-rtn,int4-gptq,int4-awq,w8a8-sq",
                   help="comma-separated: fp32, bf16, int8, int8-asym, int4-rtn, int4-gptq, int4-awq, w8a8-sq, "
                        "w8a8-rtn, llm-int8, or quantized folders")
    p.add_argument("--text", default=None, help="UTF-8 text to score perplexity, KL and top-1 on")
    p.add_argument("--max-text-tokens", type=int, default=4096, help="score the first N tokens (4096)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt every variant answers (repeatable; default: two short questions)")
    p.add_argument("--calib", default=None, help="calibration text for gptq/awq/smoothquant")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt length for the speed test (256)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens decoded in the speed test (64)")
    p.add_argument("--out", default=None, help="folder for compare.json and compare.png")
    p.add_argument("--keep-models", action="store_true", help="also keep each quantized model under OUT/models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_compare)


def run_quantize(args) -> int:
    from lmforge.plan import format_bytes
    from lmforge.quant.recipe import recipe_with_defaults
    from lmforge.quant.workflow import quantize_to_folder, weight_bytes, weights_file_bytes

    recipe = recipe_with_defaults(
        args.method, args.bits, args.group_size, args.granularity, symmetric=not args.asym, head=args.head,
        activations=args.activations, outlier_threshold=args.threshold, damp=args.damp, desc_act=args.desc_act,
        awq_grid=args.awq_grid, alpha=args.alpha, calibration_samples=args.calib_samples,
        calibration_tokens=args.calib_tokens)
    lm, report, folder = quantize_to_folder(args.model, recipe, args.out, args.calib)
    file_bytes = weights_file_bytes(folder)
    resident = weight_bytes(lm.model)
    if args.json:
        print_json({"out": str(folder), "file_bytes": file_bytes, "weight_bytes": resident,
                    "float32_weight_bytes": report.float32_weight_bytes, **report.to_dict()})
        return 0
    table = Table(title=f"{lm.name}: {recipe.method}, {recipe.bits}-bit "
                        f"{'symmetric' if recipe.symmetric else 'asymmetric'} per {recipe.granularity}"
                        + (f" {recipe.group_size}" if recipe.granularity == "group" else ""))
    for col in ("layer", "shape", "MSE", "max abs error", "SQNR dB", "note"):
        table.add_column(col, justify="left" if col in ("layer", "note") else "right")
    for layer in report.layers:
        table.add_row(layer.name, "x".join(map(str, layer.shape)), f"{layer.mse:.3g}", f"{layer.max_abs:.3g}",
                      f"{layer.sqnr_db:.1f}", layer.note)
    out.print(table)
    out.print(f"Saved to [bold]{escape(str(folder))}[/bold]: weights file {format_bytes(file_bytes)}; resident "
              f"weights {format_bytes(resident)} = {resident / report.float32_weight_bytes:.2f}x float32 "
              f"({format_bytes(report.float32_weight_bytes)}).")
    return 0


def run_compare(args) -> int:
    from lmforge.api import load_tokenizer
    from lmforge.bench.compare import DEFAULT_PROMPTS, compare, parse_variants, write_outputs

    variants = parse_variants(args.variants)
    prompts = tuple(args.prompt or DEFAULT_PROMPTS)
    text_ids = None
    if args.text:
        text = read_text_arg(None, args.text)
        text_ids = load_tokenizer(args.model).encode(text, add_special_tokens=False)[: args.max_text_tokens]
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None and args.keep_models and (out_dir / "models").exists():
        raise LmforgeError(f"{out_dir / 'models'}: exists; choose a new --out to keep the models")

    def progress(r):
        err.print(f"[dim]{r.variant}: decode {r.decode_tokens_per_s:.1f} tokens/s"
                  + (f", perplexity {r.perplexity:.3f}" if r.perplexity is not None else "") + "[/dim]")

    results = compare(args.model, variants, text_ids, prompts, args.calib, args.ctx, args.stride,
                      out_dir / "models" if out_dir is not None and args.keep_models else None, progress,
                      args.prompt_tokens, args.decode_tokens)
    title = f"{args.model or 'smollm2-135m'}: quantization variants"
    paths = write_outputs(results, out_dir, title) if out_dir is not None else {}
    if args.json:
        print_json({"variants": [r.to_dict() for r in results], **{k: str(v) for k, v in paths.items()}})
        return 0
    print_compare(results, title, prompts)
    for kind, path in paths.items():
        out.print(f"wrote {kind}: {escape(str(path))}")
    return 0


def print_compare(results, title: str, prompts) -> None:
    from lmforge.plan import format_bytes

    table = Table(title=title)
    cols = ("variant", "file", "resident", "prefill tok/s", "decode tok/s", "TTFT ms", "TPOT ms", "perplexity",
            "delta ppl", "KL", "top-1")
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in results:
        quality = ("-", "-", "-", "-") if r.perplexity is None else (
            f"{r.perplexity:.3f}", f"{r.delta_perplexity_pct:+.2f} %", f"{r.kl_divergence:.4f}",
            f"{100 * r.top1_agreement:.1f} %")
        table.add_row(f"{r.variant} [dim]({r.description})[/dim]", format_bytes(r.file_bytes),
                      format_bytes(r.weight_bytes), f"{r.prefill_tokens_per_s:.0f}", f"{r.decode_tokens_per_s:.1f}",
                      f"{r.ttft_s * 1e3:.0f}", f"{r.tpot_s * 1e3:.1f}", *quality)
    out.print(table)
    if prompts:
        answers = Table(title="Answers (greedy)", show_lines=True)
        answers.add_column("variant")
        for p in prompts:
            answers.add_column(p)
        for r in results:
            answers.add_row(r.variant, *r.answers)
        out.print(answers)
