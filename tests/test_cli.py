"""The lmforge command on the embedded model, in-process through `main([...])` (one interpreter
start per command would cost seconds each); the console script itself runs once."""

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import save_tiny_model
from lmforge.cli import main

pytestmark = pytest.mark.slow  # the commands run on the embedded model


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run(*args, stdin: str | None = None, check: bool = True) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own errors
                code = e.code
    finally:
        sys.stdin = old_stdin
    ran = Ran(code, out.getvalue(), err.getvalue())
    if check:
        assert ran.returncode == 0, ran.stderr
    return ran


def assert_clean_failure(proc, message: str):
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_every_command_has_help(capsys):
    """The console script answers --help; so does every subcommand the parser has (in-process:
    one interpreter start per command would cost ~4 s each)."""
    import argparse

    from lmforge.cli import build_parser

    console = subprocess.run([sys.executable, "-m", "lmforge.cli", "--help"], capture_output=True, text=True)
    assert console.returncode == 0 and "usage: lmforge" in console.stdout
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"generate", "chat", "eval", "inspect", "plan", "tokenize", "sampling", "formats", "quantize",
            "compare", "export", "serve"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: lmforge " + command in capsys.readouterr().out


def test_generate_json_reports_text_tokens_and_timings():
    data = json.loads(run("generate", "What is the capital of France?", "--chat", "-t", "0", "--json").stdout)
    assert "Paris" in data["text"]
    assert data["finish_reason"] == "stop" and data["completion_tokens"] == len(data["token_ids"])
    assert data["prompt_tokens"] > 10  # the chat template's system prompt is included
    assert data["ttft_s"] > 0 and data["tpot_s"] > 0 and data["tokens_per_s"] > 0
    assert data["peak_memory_bytes"] > 100e6


def test_generate_stream_no_cache_and_compare_agree():
    args = ["The capital of Germany is", "-t", "0", "--max-tokens", "12", "--ignore-eos"]
    streamed = run("generate", *args, "--stream")
    no_cache = json.loads(run("generate", *args, "--no-cache", "--json").stdout)
    assert streamed.stdout.strip() == no_cache["text"].strip()
    assert "tokens/s" in streamed.stderr and "TTFT" in streamed.stderr
    compared = json.loads(run("generate", "Once upon a time", "--max-tokens", "8", "--compare",
                              "temperature=0", "temperature=1.0,top_p=0.9,seed=3", "--json").stdout)
    assert [c["settings"] for c in compared] == ["temperature=0", "temperature=1.0,top_p=0.9,seed=3"]
    assert all(c["completion_tokens"] == 8 for c in compared)
    table = run("generate", "Once upon a time", "--max-tokens", "8", "--compare", "temperature=0", "top_k=1")
    assert table.stdout.count("temperature=0") == 1 and "top_k=1" in table.stdout


def test_chat_drops_oldest_turns_when_the_window_is_full():
    turns = "\n".join(["Tell me about rivers in two sentences."] * 4)
    proc = run("chat", "-t", "0", "--max-tokens", "40", "--context", "160", stdin=turns)
    assert "dropped the" in proc.stderr
    assert proc.stdout.count("\n") >= 4


def test_inspect_embedded_model():
    data = json.loads(run("inspect", "--json").stdout)
    assert data["name"] == "smollm2-135m" and data["architecture"] == "llama"
    assert data["parameters"] == data["parameters_in_weights"] == 134_515_008
    assert data["kv_cache_bytes_per_token"]["fp16"] == 2 * 30 * 3 * 64 * 2
    assert data["storage_types"]["Q4_1"] > 0 and data["context_length"] == 8192
    text = run("inspect").stdout
    assert "GQA" in text and "Weight memory by precision" in text


def test_plan_catalogue_model_and_budget():
    data = json.loads(run("plan", "llama-2-7b", "--device-memory", "8GB", "--context", "4096", "--batch", "1",
                          "--prompt", "1000", "--history", "2000", "--retrieval", "3000", "--json").stdout)
    fits = {p["precision"]: p["fits"] for p in data["precisions"]}
    assert fits["fp16"] is False and fits["int4"] is True
    assert data["context_budget"]["used"] == 6000 and data["context_budget"]["fits"] is False
    assert "fits" in run("plan", "--context", "2048").stdout  # default model, table output


def test_plan_from_config_json(tmp_path):
    save_tiny_model(tmp_path, "mistral")
    data = json.loads(run("plan", str(tmp_path / "config.json"), "--context", "128", "--json").stdout)
    assert all(p["fits"] for p in data["precisions"])


def test_tokenize_sampling_formats():
    data = json.loads(run("tokenize", "Hello world", "你好，世界", "--json").stdout)
    assert data[0]["tokens"] == len(data[0]["ids"]) and data[1]["tokens_per_char"] > data[0]["tokens_per_char"]
    probs = json.loads(run("sampling", "--logits", "3,2,1,0.5", "--temperature", "0.1,1", "--json").stdout)
    assert probs["rows"][0]["probabilities"][0] > 0.9999
    assert sum(probs["rows"][1]["probabilities"]) == pytest.approx(1.0)
    top_k = json.loads(run("sampling", "--top-k", "2", "--temperature", "1", "--json").stdout)
    assert top_k["rows"][0]["probabilities"][2:] == [0.0, 0.0]
    formats = json.loads(run("formats", "--params", "6e9", "--json").stdout)
    assert formats["model_bytes"]["FP32"] == 24e9 and formats["model_bytes"]["INT4"] == 3e9


def test_eval_bf16_against_float32(shared_data):
    data = json.loads(run("eval", "--dtype", "bfloat16", "--reference-dtype", "float32", "--text",
                          str(shared_data / "wikitext2_test.txt"), "--max-text-tokens", "300", "--ctx", "128",
                          "--stride", "64", "--json").stdout)
    assert data["tokens_scored"] == 299
    assert data["perplexity"] > 1 and data["reference_perplexity"] > 1
    assert 0 < data["kl_divergence"] < 0.1 and 0.8 < data["top1_agreement"] < 1


@pytest.mark.parametrize("args,message", [
    (["eval", "--text", "/nonexistent.txt"], "no such file"),
    (["eval", "--text", "README.md", "--ctx", "8", "--stride", "16"], "stride"),
    # checked before the model (here one that does not exist) is loaded
    (["eval", "/nonexistent/model", "--text", "README.md", "--ctx", "8", "--stride", "0"], "stride"),
    (["generate", "hi", "--model", "/nonexistent/model"], "no such file"),
    (["generate", "hi", "--max-tokens", "-5"], "max_tokens"),
    (["generate", "word " * 9000, "--max-tokens", "4"], "context window"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["inspect", "/nonexistent.gguf"], "no such file"),
    (["plan", "llama-2-7b", "--device-memory", "lots"], "memory size"),
    (["sampling", "--logits", "a,b"], "comma-separated numbers"),
    (["tokenize", "--file", "/nonexistent.txt"], "no such file"),
])
def test_bad_input_fails_cleanly(args, message):
    assert_clean_failure(run(*args, check=False), message)


def test_corrupt_gguf_and_unknown_architecture_fail_cleanly(tmp_path):
    from lmforge.loading import embedded_model_path

    broken = tmp_path / "broken.gguf"
    with open(embedded_model_path(), "rb") as f:
        broken.write_bytes(f.read(1_000_000))
    assert_clean_failure(run("generate", "hi", "--model", str(broken), check=False), "corrupt or truncated")
    save_tiny_model(tmp_path / "odd", "llama")
    config = json.loads((tmp_path / "odd" / "config.json").read_text())
    config["model_type"] = "rwkv"
    (tmp_path / "odd" / "config.json").write_text(json.dumps(config))
    assert_clean_failure(run("generate", "hi", "--model", str(tmp_path / "odd"), check=False),
                         "unsupported architecture")


def test_inspect_hf_directory_counts_parameters_from_weights(tmp_path):
    save_tiny_model(tmp_path, "qwen2")
    data = json.loads(run("inspect", str(tmp_path), "--json").stdout)
    assert data["architecture"] == "qwen2" and data["parameters"] == data["parameters_in_weights"]
    assert data["storage_types"] == {"F32": 27} and data["file_bytes"] > 4 * data["parameters"]


def test_quantize_then_generate_eval_and_inspect_the_saved_model(tmp_path, shared_data):
    out = tmp_path / "int4"
    data = json.loads(run("quantize", "--method", "rtn", "--bits", "4", "--out", str(out), "--json").stdout)
    assert data["recipe"]["granularity"] == "group" and data["recipe"]["group_size"] == 128
    assert data["weight_bytes"] < 0.2 * data["float32_weight_bytes"]
    assert 0 < data["file_bytes"] < 0.25 * data["float32_weight_bytes"]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert len(layers) == 30 * 4 + 1 and all(10 < layer["sqnr_db"] < 60 for layer in layers.values())
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()

    answer = json.loads(run("generate", "--model", str(out), "What is the capital of France?", "--chat", "-t", "0",
                            "--json").stdout)
    assert "Paris" in answer["text"]
    scores = json.loads(run("eval", str(out), "--text", str(shared_data / "wikitext2_test.txt"),
                            "--max-text-tokens", "300", "--ctx", "128", "--stride", "64", "--reference",
                            "smollm2-135m", "--json").stdout)
    assert scores["dtype"] == "bfloat16"
    assert scores["perplexity"] > scores["reference_perplexity"] and 0 < scores["kl_divergence"] < 1
    assert 0.5 < scores["top1_agreement"] < 1
    report = json.loads(run("inspect", str(out), "--json").stdout)
    assert report["quantization"].startswith("rtn: 4-bit symmetric weights per group of 128")
    assert report["quantization"].endswith("INT8 output layer")

    again = run("quantize", "--method", "rtn", "--out", str(out), check=False)
    assert_clean_failure(again, "not an empty folder")


def test_generate_with_an_int8_kv_cache():
    data = json.loads(run("generate", "What is the capital of France?", "--chat", "-t", "0", "--json",
                          "--kv-cache-dtype", "int8").stdout)
    assert "Paris" in data["text"]


@pytest.mark.parametrize("args,message", [
    (["--method", "rtn", "--bits", "9"], "--bits must be 8 or 4"),
    (["--method", "magic"], "unknown quantization method"),
    (["--method", "rtn", "--bits", "4", "--group-size", "100"], "--group-size must be one of"),
    (["--method", "gptq", "--calib", "/no/such/calibration.txt"], "calibration file not found"),
    (["--method", "smoothquant", "--bits", "4"], "8 bits"),
])
def test_quantize_bad_input_fails_cleanly(tmp_path, args, message):
    assert_clean_failure(run("quantize", *args, "--out", str(tmp_path / "q"), check=False), message)
    assert not (tmp_path / "q").exists()


def test_export_onnx_then_inspect_and_run_it(tmp_path):
    save_tiny_model(tmp_path / "tiny", "qwen2")
    summary = json.loads(run("export", "onnx", str(tmp_path / "tiny"), "--out", str(tmp_path / "x"),
                             "--precision", "int8", "--json").stdout)
    assert summary["operators"]["com.microsoft.MatMulNBits"] == 2 * 4 + 1
    report = json.loads(run("inspect", str(tmp_path / "x"), "--json").stdout)
    assert report["is_decoder"] and report["manifest"]["precision"] == "int8"
    assert report["opsets"]["com.microsoft"] == 1 and report["opsets"]["ai.onnx"] == 23
    assert report["initializer_bytes"]["uint8"] > 0
    inputs = {i["name"]: i for i in report["inputs"]}
    assert inputs["past_key_values.0.key"]["shape"] == ["batch_size", 2, "past_sequence_length", 16]
    table = run("inspect", str(tmp_path / "x" / "model.onnx")).stdout
    assert "GroupQueryAttention" in table and "[batch_size, sequence_length]" in table
    assert_clean_failure(run("export", "onnx", str(tmp_path / "tiny"), "--out", str(tmp_path / "x"), check=False),
                         "not empty")
    assert_clean_failure(run("export", "onnx", str(tmp_path / "tiny"), "--out", str(tmp_path / "y"), "--opset", "9",
                             check=False), "opset 9 is not supported")
    assert_clean_failure(run("generate", "hi", "--model", str(tmp_path / "x"), "--backend", "torch", check=False),
                         "onnxruntime backend")
    (tmp_path / "junk.onnx").write_bytes(b"\x08garbage")
    assert_clean_failure(run("inspect", str(tmp_path / "junk.onnx"), check=False), "not an ONNX model")


def test_generate_and_eval_with_the_onnxruntime_backend(shared_data, tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text((shared_data / "wikitext2_test.txt").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    data = json.loads(run("generate", "What is the capital of France?", "--chat", "-t", "0", "--json",
                          "--backend", "onnxruntime").stdout)
    assert "Paris" in data["text"] and data["tpot_s"] > 0
    scores = [json.loads(run("eval", "--text", str(text), "--max-text-tokens", "600", "--json", *extra).stdout)
              for extra in ([], ["--backend", "onnxruntime"])]
    assert abs(scores[0]["perplexity"] - scores[1]["perplexity"]) < 1e-3 * scores[0]["perplexity"]
