"""`lmforge probe`: this machine measured into a device profile."""

from __future__ import annotations

from rich.table import Table

from lmforge.cli.common import out, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("probe", help="measure this machine's memory, bandwidth and compute into a device profile")
    p.add_argument("--out", default=None, help="write the profile (JSON) here")
    p.add_argument("--name", default=None, help="the profile's name (default: this host's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller matrices, fewer repeats (faster, less faithful)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
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
        print_json(profile.to_dict())
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
