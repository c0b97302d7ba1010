"""`lmforge report`: plots and the SLO checklist from real results, checked in headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest

import lmforge
from fake_openai import FakeServer
from lmforge.bench.loadgen import LoadSpec
from lmforge.bench.offline import run_offline_bench
from lmforge.bench.serve_bench import run_serve_bench
from lmforge.bench.slo import checklist, parse_slo
from lmforge.cli import main
from lmforge.device.profile import load_profile
from lmforge.errors import LmforgeError
from lmforge.report.render import write_report
from lmforge.report.results import load_results

CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src || e.type))), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const pre = document.createElement('pre'); pre.id = 'lmforge-check';
  pre.textContent = JSON.stringify({images: imgs.length, widths: imgs.map(i => i.complete ? i.naturalWidth : 0),
                                    errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(html_file, tmp_path) -> dict:
    """Load the page in headless Chromium; what the page saw: its images' widths and any errors."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/setup.sh --dev installs it)"
    probe = tmp_path / "probe.html"
    probe.write_text(html_file.read_text(encoding="utf-8").replace("<head>", "<head>" + CHECK_SCRIPT, 1),
                     encoding="utf-8")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="lmforge-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page did not finish loading:\n{proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, tiny_gguf):
    folder = tmp_path_factory.mktemp("results")
    with FakeServer(0.05, 0.01) as fake:
        spec = LoadSpec(fake.url, "fake", [f"prompt {i}" for i in range(8)], max_tokens=6)
        run_serve_bench(spec, concurrencies=[1, 2], num_requests=4, slo=parse_slo("ttft=1s"),
                        out=folder / "serve.json", label="fake", show_progress=False)
    profile = load_profile("accelerator-8gb")
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        lm = lmforge.load(tiny_gguf, dtype)
        (folder / f"offline-{precision}.json").write_text(json.dumps(
            run_offline_bench(lm, prompt_tokens=16, decode_tokens=4, repeats=1, profile=profile)))
    (folder / "quality.json").write_text(json.dumps({"kind": "quality", "variants": [
        {"label": "fp32", "perplexity": 10.0, "delta_perplexity_pct": 0.0, "weight_bytes": 4e6,
         "decode_tokens_per_s": 100.0},
        {"label": "int4", "perplexity": 11.0, "delta_perplexity_pct": 10.0, "weight_bytes": 1e6,
         "decode_tokens_per_s": 250.0}]}))
    (folder / "notes.json").write_text("{\"not\": \"a result\"}")  # other JSON in a folder is passed over
    return folder


def test_report_has_every_plot_the_checklist_and_opens_in_chromium(results_dir, tmp_path):
    results = load_results([results_dir])
    assert len(results.serve) == 1 and len(results.offline) == 2 and len(results.quality) == 1
    slo = parse_slo("ttft=500ms,tps=20,utilization=70%,memory=80%")
    out = write_report(results, tmp_path / "report", slo=slo)
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert pngs == ["latency", "prediction", "quantization", "resources", "throughput", "variants"]
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for stem in pngs:
        assert f"]({stem}.png)" in md
    # the checklist shows what slo.checklist says for each level
    for level in results.serve[0]["levels"]:
        s = level["summary"]
        lines = checklist(slo, tps=s["stream_tps"]["p50"], ttft_s=s["ttft_s"]["p50"],
                          utilization=level["resources"].get("cpu_utilization_mean"),
                          memory_fraction=level["resources"].get("memory_fraction_max"))
        for line in lines:
            verdict = "pass" if line.passed else "not measured" if line.passed is None else "FAIL"
            assert f"| {line.objective} | {line.measured} | {verdict} |" in md
    assert html.count("data:image/png;base64,") == len(pngs)  # self-contained
    seen = open_in_chromium(out / "report.html", tmp_path)
    assert seen["errors"] == []
    assert seen["images"] == len(pngs) and all(w > 100 for w in seen["widths"])


def test_report_command_and_bad_input(results_dir, tmp_path, capsys):
    assert main(["report", str(results_dir / "serve.json"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    assert main(["report", str(results_dir / "serve.json"), "--out", str(tmp_path / "r")]) == 1
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(LmforgeError, match="not a JSON result"):
        load_results([tmp_path / "bad.json"])
    with pytest.raises(LmforgeError, match="not an lmforge result"):
        load_results([results_dir / "notes.json"])
    with pytest.raises(LmforgeError, match="no such result file"):
        load_results([tmp_path / "missing.json"])
    assert main(["report", str(results_dir), "--out", str(tmp_path / "r2"), "--slo", "ttft=soon"]) == 1
    assert "not a duration" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
