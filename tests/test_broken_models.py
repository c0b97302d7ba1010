"""Every command, given a broken model file, says in one line which file and what is wrong, and
exits non-zero: never a traceback. One corpus of broken models for all of them."""

import contextlib
import io
import json
import struct
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.loading import embedded_model_path

TINY_CONFIG = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 256}


def _folder(root, name, weights: bytes | None, config=None):
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config or TINY_CONFIG) if config != "bad" else "{nope")
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (path, whether only the weights are broken: a config-only command may read it)."""
    root = tmp_path_factory.mktemp("broken")
    (root / "empty.gguf").write_bytes(b"")
    (root / "random.gguf").write_bytes(bytes(range(256)) * 20)
    (root / "magic-only.gguf").write_bytes(b"GGUF" + b"\xff" * 64)
    with open(embedded_model_path(), "rb") as f:
        (root / "truncated.gguf").write_bytes(f.read(1_000_000))
    (root / "notes.txt").write_text("not a model\n")
    return {
        "empty.gguf": (root / "empty.gguf", False), "random.gguf": (root / "random.gguf", False),
        "magic-only.gguf": (root / "magic-only.gguf", False), "truncated.gguf": (root / "truncated.gguf", False),
        "notes.txt": (root / "notes.txt", False),
        "config not JSON": (_folder(root, "badjson", None, "bad"), False),
        "safetensors header not JSON": (_folder(root, "garbage", struct.pack("<Q", 24) + b"this is no json header.."),
                                        True),
        "safetensors header of 2^62 bytes": (_folder(root, "huge", struct.pack("<Q", 2 ** 62) + b"{}"), True),
        "no weights": (_folder(root, "empty-dir", None), True),
    }


def commands(model: str, work) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "hi", "--model", model, "--max-tokens", "2"],
        "chat": ["chat", "--model", model],
        "eval": ["eval", model, "--text", str(work / "text.txt")],
        "quantize": ["quantize", model, "--method", "rtn", "--out", str(work / "q")],
        "compare": ["compare", model, "--variants", "fp32", "--prompt", "hi"],
        "inspect": ["inspect", model],
        "export onnx": ["export", "onnx", model, "--out", str(work / "x")],
        "tokenize": ["tokenize", "--model", model, "hi"],
        "bench offline": ["bench", "offline", model],
        "serve": ["serve", model, "--port", "0"],
        "deploy": ["deploy", model, "--out", str(work / "d"), "--device", "accelerator-8gb"],
        "plan": ["plan", model],
    }


CONFIG_ONLY = {"plan"}  # plans from config.json alone: broken weights are not its business


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", list(commands("M", Path("."))))
def test_every_command_names_the_broken_file_in_one_line(command, corpus, tmp_path):
    (tmp_path / "text.txt").write_text("some text to score, long enough for a window or two " * 20)
    for name, (path, weights_only) in corpus.items():
        if weights_only and command in CONFIG_ONLY:
            continue
        work = tmp_path / name.replace(" ", "-")
        work.mkdir()
        (work / "text.txt").write_text((tmp_path / "text.txt").read_text())
        code, out, err = run(commands(str(path), work)[command])
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code != 0, (command, name, out, err)
        assert len(errors) == 1 and str(path) in errors[0], (command, name, err)
        assert "Traceback" not in out + err, (command, name, err)
