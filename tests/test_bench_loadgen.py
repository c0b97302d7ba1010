"""The load generator against a fake server whose delays are known, and against lmforge serve."""

import asyncio
import json

import pytest

from fake_openai import FakeServer
from lmforge.bench.loadgen import (LoadSpec, check_reachable, closed_loop, file_prompts, open_loop,
                                   poisson_arrivals)
from lmforge.bench.records import summarize
from lmforge.bench.slo import parse_slo
from lmforge.cli import main
from lmforge.errors import LmforgeError

TTFT, ITL, TOKENS = 0.2, 0.05, 8


@pytest.fixture(scope="module")
def fake():
    with FakeServer(TTFT, ITL) as server:
        yield server


def spec(url, model="fake", endpoint="completions", tokens=TOKENS):
    return LoadSpec(url, model, ["one two three", "four five"], tokens, endpoint)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_closed_loop_metrics_match_the_servers_delays(fake, endpoint):
    records, wall = asyncio.run(closed_loop(spec(fake.url, endpoint=endpoint), concurrency=4, num_requests=8))
    assert len(records) == 8 and all(r.ok for r in records)
    assert fake.app.state.peak_active == 4  # never more than C in flight
    s = summarize(records, wall)
    assert s["output_tokens"] == 8 * TOKENS and s["prompt_tokens"] > 0
    # The server waits at least its delays; a loaded machine only adds to them (no upper bounds here).
    assert all(r.ttft_s >= TTFT and r.e2e_s >= TTFT + (TOKENS - 1) * ITL for r in records)
    assert s["ttft_s"]["min"] >= TTFT and s["tpot_s"]["min"] >= ITL  # first token excluded: inter-token gaps
    assert s["itl_s"]["count"] == 8 * (TOKENS - 1)
    assert all(r.chunk_times_s == sorted(r.chunk_times_s) and r.chunk_times_s[-1] <= r.e2e_s for r in records)
    # two rounds of four clients: the second round starts when the first ends
    assert wall >= 2 * (TTFT + (TOKENS - 1) * ITL)
    assert s["output_token_throughput"] == pytest.approx(8 * TOKENS / wall)
    assert s["request_throughput"] == pytest.approx(8 / wall)
    assert summarize(records, wall, parse_slo("ttft=100ms"))["good_requests"] == 0  # TTFT >= 200 ms
    assert summarize(records, wall, parse_slo("tps=50"))["good_requests"] == 0  # 1/TPOT <= 20 tok/s
    for slo in ("ttft=1s", "tps=10,e2e=2s"):  # goodput counts exactly the records within the objectives
        met = sum(r.ttft_s < 1 for r in records) if slo == "ttft=1s" else \
            sum(1 / r.tpot_s > 10 and r.e2e_s < 2 for r in records)
        judged = summarize(records, wall, parse_slo(slo))
        assert judged["good_requests"] == met and judged["goodput"] == pytest.approx(met / wall)


def test_open_loop_sends_on_the_arrival_schedule_without_waiting(fake):
    fake.app.state.peak_active = 0
    rate, n = 20.0, 12
    records, wall = asyncio.run(open_loop(spec(fake.url), rate, n, seed=3))
    arrivals = poisson_arrivals(rate, n, seed=3)
    assert all(r.ok for r in records)
    by_send = sorted(records, key=lambda r: r.sent_s)
    assert [r.index for r in by_send] == list(range(n))  # in the order of the schedule
    assert all(r.sent_s >= arrivals[r.index] - 0.01 for r in records)  # never before its time
    # Not waiting for answers: each request lasts >= 0.55 s and arrivals come every ~0.05 s, so a
    # request goes out before the one before it has finished (a delay only makes more of them overlap).
    overlapping = sum(b.sent_s < a.sent_s + a.e2e_s for a, b in zip(by_send, by_send[1:]))
    assert overlapping >= n // 2 and fake.app.state.peak_active >= 2
    capped = sorted(asyncio.run(open_loop(spec(fake.url), rate, 6, seed=3, max_concurrency=1))[0],
                    key=lambda r: r.sent_s)
    assert all(b.sent_s >= a.sent_s + a.e2e_s for a, b in zip(capped, capped[1:]))  # one at a time


def test_poisson_arrivals_have_the_asked_rate():
    times = poisson_arrivals(5.0, 4000, seed=1)
    assert times == sorted(times)
    assert 4000 / times[-1] == pytest.approx(5.0, rel=0.06)
    assert poisson_arrivals(5.0, 10, seed=1) == times[:10]


@pytest.mark.parametrize("model, kind", [("fail-500", "http 500"), ("fail-429", "http 429"),
                                         ("cut", "incomplete stream")])
def test_server_errors_are_recorded_by_kind(fake, model, kind):
    records, wall = asyncio.run(closed_loop(spec(fake.url, model), 2, 4))
    s = summarize(records, wall)
    assert s["failed"] == 4 and s["completed"] == 0 and s["errors"] == {kind: 4}
    assert s["ttft_s"] is None and s["output_token_throughput"] == 0


def test_unreachable_url_fails_clearly():
    with pytest.raises(LmforgeError, match="cannot reach http://127.0.0.1:9"):
        check_reachable("http://127.0.0.1:9")
    records, _ = asyncio.run(closed_loop(spec("http://127.0.0.1:9"), 1, 2))
    assert [r.error for r in records] == ["connect", "connect"]


def test_prompts_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n  second prompt \n", encoding="utf-8")
    assert file_prompts(f) == ["first prompt", "second prompt"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(LmforgeError, match="no prompts"):
        file_prompts(tmp_path / "empty.txt")
    with pytest.raises(LmforgeError, match="no such"):
        file_prompts(tmp_path / "missing.txt")


def test_cli_writes_every_record_and_exits_non_zero_on_errors(fake, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nhow are you\n")
    out = tmp_path / "run.json"
    code = main(["bench", "serve", "--url", fake.url, "--model", "fake", "--concurrency", "1,2",
                 "--num-requests", "4", "--prompts-file", str(prompts), "--max-tokens", "4",
                 "--slo", "ttft=1s,tpot=200ms", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "serve-bench" and result["complete"]
    assert [lvl["value"] for lvl in result["levels"]] == [1, 2]
    assert all(len(lvl["records"]) == 4 and lvl["summary"]["goodput"] > 0 for lvl in result["levels"])
    assert "resources" in result["levels"][0] and result["levels"][0]["resources"]["samples"] >= 1
    assert "TTFT" in capsys.readouterr().out

    failing = tmp_path / "fail.json"
    code = main(["bench", "serve", "--url", fake.url, "--model", "fail-500", "--concurrency", "2",
                 "--num-requests", "3", "--prompts-file", str(prompts), "--out", str(failing), "--warmup", "0"])
    assert code == 1
    assert "3 of 3 requests failed (http 500: 3)" in capsys.readouterr().err
    kept = json.loads(failing.read_text())
    assert kept["levels"][0]["summary"]["errors"] == {"http 500": 3}

    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--model", "x", "--concurrency", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["bench", "serve", "--url", fake.url, "--model", "fake", "--concurrency", "1",
                 "--slo", "ttft=fast"]) == 1
    assert "not a duration" in capsys.readouterr().err
    assert main(["bench", "serve", "--url", fake.url, "--model", "fake"]) == 1
    assert "--concurrency" in capsys.readouterr().err
