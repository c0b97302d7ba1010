"""`lmforge compare`: every variant measured, scored against float32, and plotted."""

import json
import subprocess
import sys

import pytest

from lmforge.errors import LmforgeError
from lmforge.precision import INT4_GROUP
from lmforge.bench.compare import describe, parse_variants


def test_variant_names_are_checked(tmp_path):
    assert parse_variants("fp32, int4-gptq") == ["fp32", "int4-gptq"]
    assert parse_variants(str(tmp_path)) == [str(tmp_path)]  # a saved folder
    assert describe("int4-awq") == f"awq 4-bit sym per group {INT4_GROUP}"  # the one meaning of int4
    assert describe("int4-rtn") == f"rtn 4-bit sym per group {INT4_GROUP}"
    with pytest.raises(LmforgeError, match="unknown variant 'int3'"):
        parse_variants("fp32,int3")


@pytest.mark.slow  # seven variants of the embedded model, measured
def test_compare_writes_table_json_and_plot(tmp_path, shared_data):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "compare", "--variants", "fp32,int8,int4-rtn",
                           "--text", str(shared_data / "wikitext2_test.txt"), "--max-text-tokens", "400",
                           "--ctx", "128", "--stride", "64", "--prompt", "What is the capital of France?",
                           "--prompt-tokens", "32", "--decode-tokens", "8", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["variant"]: r for r in data["variants"]}
    assert list(rows) == ["fp32", "int8", "int4-rtn"]
    assert rows["fp32"]["delta_perplexity_pct"] == pytest.approx(0, abs=1e-9)
    assert rows["fp32"]["top1_agreement"] == 1.0
    assert rows["int4-rtn"]["weight_bytes"] < rows["int8"]["weight_bytes"] < 0.3 * rows["fp32"]["weight_bytes"]
    assert rows["int4-rtn"]["file_bytes"] < rows["int8"]["file_bytes"] < rows["fp32"]["file_bytes"]
    assert 0 < rows["int8"]["kl_divergence"] < rows["int4-rtn"]["kl_divergence"]
    for r in rows.values():
        assert r["decode_tokens_per_s"] > 0 and r["ttft_s"] > 0 and "Paris" in r["answers"][0]
    assert json.loads((out / "compare.json").read_text())["variants"][1]["variant"] == "int8"
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
