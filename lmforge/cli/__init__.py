"""The `lmforge` command: parses arguments, calls the library, prints tables or JSON.

One module per command group, each with `add_parser(sub)`; every command it adds sets its own
`run` function. A new command is a module here and a line in COMMANDS (the order is the help's).
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from lmforge import __version__
from lmforge.cli import (
    bench,
    deploy,
    evaluate,
    explain,
    export,
    generate,
    inspect,
    plan,
    probe,
    quantize,
    report,
    serve,
)
from lmforge.cli.common import err
from lmforge.errors import LmforgeError

COMMANDS = (generate, evaluate, quantize, inspect, serve, export, plan, explain, bench, report, deploy, probe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="From a language-model checkpoint to a "
                                     "measured deployment on CPUs and memory-limited chips.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMANDS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LmforgeError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)  # one line, however long
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0
