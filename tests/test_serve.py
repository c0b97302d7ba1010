"""A real `lmforge serve` process on 127.0.0.1: what only a process shows (start-up, sockets, client
disconnects, SIGTERM). Routes and their rules are tested in-process in test_serve_routes.py."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # a real server process on the embedded model

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Output goes to a file: an unread pipe fills up and blocks a server that logs a lot.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.health_seen = []  # statuses of /health while starting
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                self.health_seen.append(httpx.get(self.url + "/health", timeout=2).status_code)
                if self.health_seen[-1] == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not become healthy")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused")


def test_smoke_a_served_chat_with_the_official_client(server, client):
    assert 503 in server.health_seen and server.health_seen[-1] == 200  # 503 while the model loads
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 10
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_a_client_that_disconnects_frees_its_slot(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 2000,
                            "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert httpx.get(server.url + "/health").json()["running"] == 1
    deadline = time.time() + 10
    while httpx.get(server.url + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert httpx.get(server.url + "/health").json()["running"] == 0
    assert "lmforge_kv_cache_slots_used 0.0" in httpx.get(server.url + "/metrics").text


def test_sigterm_finishes_the_request_in_flight_then_exits():
    server = Server("--drain-timeout", "60")
    with httpx.stream("POST", server.url + "/generate", timeout=120,
                      json={"prompt": "Write a poem.", "max_tokens": 40, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["completion_tokens"] == 40 and first
    assert server.proc.wait(60) == 0  # a clean drain is a clean exit
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_sigterm_past_the_drain_timeout_ends_requests_with_errors_and_exits_in_time():
    drain = 3
    server = Server("--drain-timeout", str(drain), "--max-batch", "2")
    long = {"prompt": "Write a very long poem.", "max_tokens": 4000, "ignore_eos": True}

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as client:
            async def streamed():
                async with client.stream("POST", server.url + "/v1/completions",
                                         json={"model": MODEL, **long, "stream": True}) as r:
                    return [line async for line in r.aiter_lines() if line.startswith("data: ")]

            async def whole():
                return await client.post(server.url + "/generate", json=long)

            tasks = [asyncio.create_task(streamed()), asyncio.create_task(whole())]
            while httpx.get(server.url + "/health").json()["running"] < 2:
                await asyncio.sleep(0.05)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            events, reply = await asyncio.gather(*tasks)
            status = await asyncio.to_thread(server.proc.wait, 60)
            return events, reply, status, time.monotonic() - signalled

    events, reply, status, took = asyncio.run(scenario())
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "unavailable"  # an error event, then [DONE]
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "unavailable"
    assert status == 0 and took < drain + 10, (status, took, server.output()[-2000:])


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_load_generator_against_lmforge_serve(server):
    from lmforge.bench.loadgen import LoadSpec, closed_loop
    from lmforge.bench.records import summarize

    before = _metric(server.url, "lmforge_generation_tokens_total")
    spec = LoadSpec(server.url, MODEL, ["Tell me about rivers.", "Name three colours.", "Count to five.", "Say hello."], max_tokens=8,
                    endpoint="chat", ignore_eos=True)
    records, wall = asyncio.run(closed_loop(spec, concurrency=2, num_requests=4))
    s = summarize(records, wall)
    assert s["completed"] == 4 and s["output_tokens"] == 32
    assert _metric(server.url, "lmforge_generation_tokens_total") - before == 32  # the server counted the same
    for r in records:
        assert 0 < r.ttft_s < r.e2e_s and r.prompt_tokens > 5 and len(r.chunk_times_s) <= 8
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / 7)
