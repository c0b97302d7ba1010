"""`lmforge deploy` end to end on a tiny model, resuming, and its refusals."""

import json

import pytest

from lmforge.cli import main
from lmforge.deploy.pipeline import Deploy, DeploySettings
from lmforge.errors import LmforgeError

pytestmark = pytest.mark.slow  # the whole deploy loop

STAGES = ["inspect", "device", "plan", "quantize", "export", "bench-offline", "quality", "bench-serve", "report"]


def deploy_args(model, out, *extra):
    return ["deploy", str(model), "--out", str(out), "--device", "accelerator-8gb", "--concurrency", "1,2",
            "--prompt-tokens", "16", "--max-tokens", "8", "--eval-tokens", "256", *extra]


def stage_states(out):
    return {name: json.loads((out / "stages" / f"{name}.json").read_text()) for name in STAGES
            if (out / "stages" / f"{name}.json").is_file()}


def test_deploy_end_to_end_then_resume(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "deploy"
    assert main(deploy_args(tiny_gguf, out, "--precision", "int4")) == 0
    printed = capsys.readouterr().out
    states = stage_states(out)
    assert list(states) == STAGES and all(s["status"] == "done" for s in states.values())
    assert states["plan"]["data"]["chosen"] == "int4"
    assert (out / "quantized" / "config.json").is_file() and (out / "model" / "model.onnx").is_file()
    manifest = json.loads((out / "model" / "lmforge_onnx.json").read_text())
    assert manifest["precision"] == "int4"
    quality = json.loads((out / "results" / "quality.json").read_text())
    deployed = quality["variants"][1]
    assert deployed["perplexity"] > 0 and 0 <= deployed["top1_agreement"] <= 1 and deployed["kl_divergence"] >= 0
    serve = json.loads((out / "results" / "serve.json").read_text())
    assert [level["value"] for level in serve["levels"]] == [1, 2]
    assert all(level["summary"]["failed"] == 0 for level in serve["levels"])
    assert all(r["output_tokens"] == 8 for level in serve["levels"] for r in level["records"])
    offline = json.loads((out / "results" / "offline-deployed.json").read_text())
    assert offline["backend"] == "onnxruntime" and offline["precision"] == "int4" and "prediction" in offline
    html = (out / "report" / "report.html").read_text()
    assert "SLO checklist" in html and "data:image/png" in html
    assert "report" in printed and "resumed" not in printed

    # the same command again: every stage is already done
    assert main(deploy_args(tiny_gguf, out, "--precision", "int4")) == 0
    assert capsys.readouterr().out.count("already done") == len(STAGES)

    # an interrupted run: the last two stages rerun, the rest are kept
    for name in ("bench-serve", "report"):
        (out / "stages" / f"{name}.json").unlink()
    before = (out / "results" / "quality.json").stat().st_mtime_ns
    assert main(deploy_args(tiny_gguf, out, "--precision", "int4")) == 0
    text = capsys.readouterr().out
    assert text.count("already done") == len(STAGES) - 2
    assert (out / "results" / "quality.json").stat().st_mtime_ns == before
    assert json.loads((out / "results" / "deploy.json").read_text())["stages"][-1]["status"] == "done"

    # other settings in the same folder are refused, not mixed
    assert main(deploy_args(tiny_gguf, out, "--precision", "int8")) == 1
    assert "other settings (precision differ)" in capsys.readouterr().err


def test_deploy_chooses_by_prediction_without_precision(tiny_gguf, tmp_path):
    deploy = Deploy(DeploySettings(model=str(tiny_gguf), out=str(tmp_path / "d"), device="accelerator-8gb",
                                   slo="tps=1000000,ttft=500ms"))
    for stage in deploy.stages()[:3]:  # inspect, device, plan
        deploy.runner.run([stage])
    plan = deploy.runner.data("plan")
    fastest = max(plan["candidates"], key=lambda c: c["stream_tokens_per_s_at_load"])
    assert plan["chosen"] == fastest["precision"] and "no precision is predicted" in plan["why"]


@pytest.mark.parametrize("extra, message", [
    (["--slo", "ttft=quick"], "not a duration"),
    (["--concurrency", "0"], "positive"),
    (["--eval-text", "/no/such/file.txt"], "no such text file"),
])
def test_bad_input_fails_before_any_work(tiny_gguf, tmp_path, capsys, extra, message):
    out = tmp_path / "d"
    assert main(deploy_args(tiny_gguf, out, *extra)) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_is_not_a_deploy_is_refused(tiny_gguf, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LmforgeError, match="not a deploy folder"):
        Deploy(DeploySettings(model=str(tiny_gguf), out=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
