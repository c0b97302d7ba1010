"""`lmforge export onnx`: a folder that runs on its own with ONNX Runtime."""

from __future__ import annotations

from lmforge.cli.common import EXAMPLE_PROMPT, err, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (a folder that runs on its own with ONNX Runtime)")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser("onnx", help="decoder with KV cache, fused attention/norms, MatMulNBits for INT4/INT8")
    p.add_argument("model", nargs="?", default=None, help="model to export (default: the embedded one)")
    p.add_argument("--out", required=True, help="new folder for model.onnx, its weights, tokenizer and manifest")
    p.add_argument("--precision", choices=["fp32", "int8", "int4"], default=None,
                   help="fp32, or weights quantized round-to-nearest at export (default: the model's own; a "
                        "quantized lmforge folder keeps its levels)")
    p.add_argument("--opset", type=int, default=23,
                   help="ONNX opset of the default domain (17..24; default 23, where RMSNormalization is standard)")
    p.add_argument("--group-size", type=int, default=32, help="int4 from float: columns per scale (32)")
    p.add_argument("--accuracy-level", type=int, default=4,
                   help="MatMulNBits compute: 4 = INT8 activations per block (fast, default), 0 = float32")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from lmforge.onnx.export import export_onnx
    from lmforge.onnx.inspect import inspect_onnx
    from lmforge.plan import format_bytes

    folder = export_onnx(args.model, args.out, args.precision, args.opset, args.group_size, args.accuracy_level)
    report = inspect_onnx(folder / "model.onnx")
    summary = {"out": str(folder), "operators": report.operators, "initializer_bytes": report.initializer_bytes,
               "external_data_bytes": report.external_data_bytes}
    if args.json:
        print_json(summary)
        return 0
    ops = ", ".join(f"{op} x{n}" for op, n in list(report.operators.items())[:6])
    err.print(f"wrote {folder} ({format_bytes(report.external_data_bytes)} of weights); {ops}")
    err.print(f"run it: lmforge generate --model {folder} \"{EXAMPLE_PROMPT}\" --chat")
    return 0
