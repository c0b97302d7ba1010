"""What the `lmforge` command promises its users: every command's --help text and the keys of
its --json output. `tests/snapshots/cli.json` holds them as taken before a refactor; the test
in test_cli_snapshot.py compares the code of today against it.

Write the snapshot anew (only when a change to the interface is meant):
    .venv/bin/python tests/cli_snapshot.py --write
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "snapshots" / "cli.json"
HELP_COLUMNS = "120"


def help_texts() -> dict[str, str]:
    """'generate' -> its --help text, for every command and subcommand the parser has."""
    from lmforge.cli import build_parser

    texts: dict[str, str] = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        texts[" ".join(path)] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, path + [name])

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal's width
    try:
        walk(build_parser(), [])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return texts


def shape(value):
    """The keys of a JSON value, recursively (a list by its first item; values dropped)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def run_json(args: list[str]):
    from lmforge.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
        code = main(args)
    if code != 0:
        raise AssertionError(f"lmforge {' '.join(args)} exited with {code}")
    return json.loads(buffer.getvalue())


def json_commands(model: Path, text: Path, work: Path, server_url: str) -> dict[str, list[str]]:
    """One run of each --json output on the tiny model (a name -> its arguments)."""
    m = str(model)
    return {
        "generate": ["generate", "hi", "--model", m, "-t", "0", "--max-tokens", "4", "--json"],
        "generate --compare": ["generate", "hi", "--model", m, "--max-tokens", "3", "--compare", "temperature=0",
                               "top_k=1", "--json"],
        "inspect": ["inspect", m, "--json"],
        "plan": ["plan", m, "--context", "64", "--prompt", "10", "--history", "5", "--json"],
        "tokenize": ["tokenize", "--model", m, "hello", "--json"],
        "sampling": ["sampling", "--json"],
        "formats": ["formats", "--params", "1e9", "--json"],
        "eval": ["eval", m, "--text", str(text), "--ctx", "32", "--stride", "16", "--max-text-tokens", "80",
                 "--reference-dtype", "float32", "--json"],
        "quantize": ["quantize", m, "--method", "rtn", "--bits", "4", "--group-size", "32",
                     "--out", str(work / "q4"), "--json"],
        "export onnx": ["export", "onnx", m, "--out", str(work / "onnx"), "--json"],
        "inspect onnx": ["inspect", str(work / "onnx"), "--json"],
        "compare": ["compare", m, "--variants", "fp32,int8", "--text", str(text), "--max-text-tokens", "80",
                    "--ctx", "32", "--stride", "16", "--prompt", "hi", "--prompt-tokens", "8",
                    "--decode-tokens", "4", "--json"],
        "bench offline": ["bench", "offline", m, "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1",
                          "--json"],
        "bench serve": ["bench", "serve", "--url", server_url, "--model", "fake", "--concurrency", "1",
                        "--num-requests", "2", "--max-tokens", "3", "--tokenizer", m, "--prompt-tokens", "8",
                        "--json"],
    }


def json_shapes(model: Path, text: Path, server_url: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="lmforge-snapshot-") as work:
        return {name: shape(run_json(args))
                for name, args in json_commands(model, text, Path(work), server_url).items()}


def take(model: Path, text: Path, server_url: str) -> dict:
    return {"help": help_texts(), "json": json_shapes(model, text, server_url)}


def _write() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import SHARED_DATA, save_tiny_model, write_tiny_gguf
    from fake_openai import FakeServer

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LMFORGE_CACHE_DIR"] = str(Path(tmp) / "cache")
        model = write_tiny_gguf(save_tiny_model(Path(tmp) / "hf", "llama"), Path(tmp) / "tiny.gguf")
        with FakeServer(ttft_s=0.01, itl_s=0.001) as server:
            snapshot = take(model, SHARED_DATA / "wikitext2_test.txt", server.url)
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {SNAPSHOT}: {len(snapshot['help'])} help texts, {len(snapshot['json'])} JSON outputs")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    _write()
