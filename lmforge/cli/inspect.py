"""`lmforge inspect`: a model's architecture, parameters, memory and KV cache; an ONNX file's graph."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import fmt_params, out, print_json
from lmforge.errors import LmforgeError


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="architecture, parameters, memory per precision, KV cache per token")
    p.add_argument("model", nargs="?", default=None,
                   help="model, config.json, catalogue name (see `lmforge plan --list`), .onnx file or ONNX export")
    p.add_argument("--netron", action="store_true", help="also serve the ONNX file in Netron (pip install netron)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmforge.inspection import inspect_model
    from lmforge.onnx.export import MODEL_FILE, is_onnx_export, is_onnx_file, read_manifest
    from lmforge.plan import format_bytes
    from lmforge.precision import PLAN_WEIGHT_BYTES

    if is_onnx_file(args.model) or is_onnx_export(args.model):
        folder = Path(args.model)
        manifest = read_manifest(folder) if is_onnx_export(folder) else None
        return inspect_onnx_file(folder / MODEL_FILE if manifest else folder, manifest, args)
    if args.netron:
        raise LmforgeError("--netron opens ONNX files; give a .onnx file or an export folder")
    report = inspect_model(args.model)
    if args.json:
        print_json(report.to_dict())
        return 0
    c = report.config
    table = Table(title=f"{report.name} ({c.architecture})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("source", report.source)
    table.add_row("layers / hidden / intermediate", f"{c.num_layers} / {c.hidden_size} / {c.intermediate_size}")
    attention = "MHA" if c.num_kv_heads == c.num_heads else ("MQA" if c.num_kv_heads == 1 else "GQA")
    table.add_row("attention heads", f"{c.num_heads} query, {c.num_kv_heads} key/value ({attention}), "
                                     f"head dim {c.head_dim}")
    table.add_row("vocabulary", f"{c.vocab_size}" + (" (tied input/output embeddings)" if c.tie_word_embeddings else ""))
    table.add_row("context length", f"{c.max_position_embeddings} tokens")
    table.add_row("rope", f"theta {c.rope_theta:g}" + (f", scaling {c.rope_scaling_dict}" if c.rope_scaling else ""))
    table.add_row("parameters", f"{fmt_params(report.parameters)} ({report.parameters:,})")
    if report.parameters_in_weights is not None:
        table.add_row("parameters in weight files", f"{report.parameters_in_weights:,}")
    if report.file_bytes:
        table.add_row("file size", format_bytes(report.file_bytes))
    if report.storage_types:
        table.add_row("stored as", ", ".join(f"{k} x{v}" for k, v in sorted(report.storage_types.items())))
    if report.quantization:
        table.add_row("quantization", report.quantization)
    out.print(table)

    parts = Table(title="Parameters by component")
    for col in ("component", "parameters", "share"):
        parts.add_column(col, justify="right" if col != "component" else "left")
    for name, n in report.parameters_by_component.items():
        parts.add_row(name, f"{n:,}", f"{100 * n / report.parameters:.1f} %")
    out.print(parts)

    mem = Table(title="Weight memory by precision")
    mem.add_column("precision")
    mem.add_column("bytes/param", justify="right")
    mem.add_column("weights", justify="right")
    for p, b in report.memory_by_precision().items():
        mem.add_row(p, f"{PLAN_WEIGHT_BYTES[p]:.3g}", format_bytes(b))
    out.print(mem)

    kv = Table(title="KV cache per token: 2 x layers x kv_heads x head_dim x bytes")
    kv.add_column("cache dtype")
    kv.add_column("per token", justify="right")
    kv.add_column("per 1000 tokens", justify="right")
    kv.add_column(f"full context ({c.max_position_embeddings})", justify="right")
    for p, b in report.kv_bytes_per_token().items():
        kv.add_row(p, format_bytes(b), format_bytes(b * 1000), format_bytes(b * c.max_position_embeddings))
    out.print(kv)
    naive = 2 * c.hidden_size * c.num_layers * 2
    if c.num_kv_heads != c.num_heads:
        out.print(f"[dim]The formula 2 x hidden x layers x 2 bytes ignores {attention} and would say "
                  f"{format_bytes(naive)} per token, {naive / report.kv_bytes_per_token()['fp16']:.0f}x too much.[/dim]")
    return 0


def inspect_onnx_file(path: Path, manifest: dict | None, args) -> int:
    from lmforge.onnx.inspect import inspect_onnx, serve_netron
    from lmforge.plan import format_bytes

    report = inspect_onnx(path)
    report.manifest = manifest
    if args.json:
        print_json(report.to_dict())
    else:
        table = Table(title=f"{path}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        if manifest:
            table.add_row("lmforge export", f"{manifest.get('name')} at {manifest.get('precision')}, "
                                            f"from {manifest.get('source')}")
        table.add_row("ir version / producer", f"{report.ir_version} / {report.producer or '-'}")
        table.add_row("opsets", ", ".join(f"{d} {v}" for d, v in report.opsets.items()))
        table.add_row("graph file / external data", f"{format_bytes(report.file_bytes)} / "
                                                    f"{format_bytes(report.external_data_bytes)}")
        table.add_row("initializers", f"{report.initializer_count}: " + ", ".join(
            f"{dtype} {format_bytes(b)}" for dtype, b in report.initializer_bytes.items()))
        table.add_row("decoder with KV cache", "yes" if report.is_decoder else "no")
        out.print(table)
        for title, tensors in (("Inputs", report.inputs), ("Outputs", report.outputs)):
            shown = tensors if len(tensors) <= 12 else tensors[:6] + tensors[-4:]
            t = Table(title=f"{title} ({len(tensors)})")
            for col in ("name", "dtype", "shape"):
                t.add_column(col)
            for info in shown:
                t.add_row(info.name, info.dtype, escape("[" + ", ".join(map(str, info.shape)) + "]"))
            if len(shown) < len(tensors):
                t.caption = f"{len(tensors) - len(shown)} more (per-layer KV cache), see --json"
            out.print(t)
        ops = Table(title="Operators")
        ops.add_column("operator")
        ops.add_column("count", justify="right")
        for op, n in report.operators.items():
            ops.add_row(op, str(n))
        out.print(ops)
    if args.netron:
        serve_netron(path)
    return 0
