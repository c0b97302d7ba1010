"""A real `lmforge serve` process on 127.0.0.1, driven by the official openai client and by httpx."""

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


def test_openai_chat_streaming_and_not(client):
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 10
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_health_is_503_while_loading_and_identical_requests_come_from_the_cache(server):
    assert 503 in server.health_seen and server.health_seen[-1] == 200

    def hits():
        metrics = httpx.get(server.url + "/metrics").text
        return float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith("lmforge_response_cache_hits_total")))

    body = {"model": MODEL, "prompt": "Cache me if you can.", "max_tokens": 6, "temperature": 0}
    before = hits()
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    second = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert hits() == before + 1 and first["choices"][0]["text"] == second["choices"][0]["text"]
    sampled = {**body, "temperature": 0.9}  # not deterministic: never cached
    httpx.post(server.url + "/v1/completions", json=sampled, timeout=60)
    httpx.post(server.url + "/v1/completions", json=sampled, timeout=60)
    assert hits() == before + 1


def test_openai_completions_n_seed_stop_logprobs_and_echo(client):
    out = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, n=2, seed=7,
                                    temperature=1.0, extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
    again = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, n=2, seed=7,
                                      temperature=1.0, extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1})
    assert [c.text for c in out.choices] == [c.text for c in again.choices] and len(out.choices) == 2
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=["7"])
    assert "7" not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    scored = client.completions.create(model=MODEL, prompt="The capital of France is Paris", max_tokens=1,
                                       temperature=0, echo=True, logprobs=2)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text.startswith("The capital of France is Paris")
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens).startswith("The capital of France is Paris") and len(lp.top_logprobs[1]) == 2
    streamed = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0, stream=True)
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    extra = client.completions.create(model=MODEL, prompt="Hi", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True, "min_tokens": 5})
    assert extra.usage.completion_tokens == 5


def test_seed_generate_contract(server):
    body = httpx.post(server.url + "/generate", json={"prompt": "The capital of France is", "max_tokens": 8,
                                                      "temperature": 0}, timeout=60).json()
    assert body["completion_tokens"] == 8 and body["ttft_ms"] > 0 and body["tpot_ms"] > 0 and "Paris" in body["text"]
    with httpx.stream("POST", server.url + "/generate", json={"prompt": "The capital of France is", "max_tokens": 8,
                                                              "temperature": 0, "stream": True}, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert "".join(json.loads(e)["text"] for e in events[:-2]) == body["text"] and final["finish_reason"] == "length"


def test_concurrent_greedy_requests_match_one_by_one(server):
    prompts = [f"Question {i}: name a colour and a fruit." for i in range(8)]

    def body(p):
        return {"model": MODEL, "prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": True}

    alone = [httpx.post(server.url + "/v1/completions", json=body(p), timeout=120).json()["choices"][0]["text"]
             for p in prompts[:3]]

    async def together():
        async with httpx.AsyncClient(timeout=120) as c:
            replies = await asyncio.gather(*(c.post(server.url + "/v1/completions", json=body(p)) for p in prompts))
        return [r.json()["choices"][0]["text"] for r in replies]

    assert (asyncio.run(together()))[:3] == alone


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


@pytest.mark.parametrize("payload,param", [
    ({"prompt": "x", "temperature": -1}, "temperature"), ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10 ** 6}, "max_tokens"), ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"), ({"prompt": "x", "seed": -3}, "seed"),
    ({"prompt": "x", "min_tokens": 20, "max_tokens": 5}, "min_tokens"), ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": [999999]}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "repetition_penalty": 0}, None),
    ({}, "prompt"), ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
])
def test_out_of_range_parameters_are_400_naming_them(server, payload, param):
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, **payload}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param or error["param"].startswith(param), error


def test_other_client_errors(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "gpt-9", "messages": QUESTION})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard"}]})
    assert r.status_code == 400
    assert httpx.get(server.url + "/nowhere").status_code == 404
    tokens = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    assert httpx.post(server.url + "/detokenize", json={"tokens": tokens}).json()["prompt"] == "Hello world"
    assert httpx.post(server.url + "/detokenize", json={"tokens": [-1]}).status_code == 400
    r = httpx.post(server.url + "/tokenize", json={"messages": []})  # found by the fuzz: was a 500
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_queue_limit_degradation_rate_limit_and_keys():
    server = Server("--max-batch", "1", "--max-queue", "2", "--api-key", "sesame", "--api-key", "other",
                    "--rate-limit", "6/min", "--degrade-max-tokens", "10")
    try:
        url = server.url + "/v1/completions"
        body = {"model": MODEL, "prompt": "Count to one hundred:", "max_tokens": 60, "ignore_eos": True}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer sesame"}

        async def burst(stagger: float, count: int = 4, headers=good, payload=body):
            async with httpx.AsyncClient(timeout=120, headers=headers) as c:
                async def send(i):
                    await asyncio.sleep(i * stagger)
                    return await c.post(url, json=payload)
                return await asyncio.gather(*(send(i) for i in range(count)))

        # One request runs (one slot), the next waits; the third finds the queue half full and has its
        # max_tokens capped (and is told so); the fourth finds it full: 429 with Retry-After.
        first = asyncio.run(burst(0.3))
        assert [r.status_code for r in first] == [200, 200, 200, 429], [r.text for r in first]
        assert [("x-lmforge-degraded" in r.headers) for r in first[:3]] == [False, False, True]
        assert first[2].json()["usage"]["completion_tokens"] == 10
        assert first[3].json()["error"]["code"] == "queue_full" and int(first[3].headers["Retry-After"]) >= 1
        # Six requests a minute per key: another key's burst of 8 gets 2 rate-limit 429s with Retry-After.
        second = asyncio.run(burst(0.0, 8, {"Authorization": "Bearer other"}, {**body, "max_tokens": 1}))
        limited = [r for r in second if r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"]
        assert len(limited) == 2 and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'lmforge_requests_rejected_total{reason="queue_full"}' in metrics
        assert 'lmforge_requests_rejected_total{reason="unauthorized"} 2.0' in metrics
        assert "lmforge_requests_degraded_total 1.0" in metrics
    finally:
        server.stop()


def test_sigterm_finishes_the_request_in_flight_then_exits():
    server = Server("--drain-timeout", "60")
    with httpx.stream("POST", server.url + "/generate", timeout=120,
                      json={"prompt": "Write a poem.", "max_tokens": 40, "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["completion_tokens"] == 40 and first
    assert server.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_timeouts_and_the_onnxruntime_backend():
    server = Server("--backend", "onnxruntime", "--request-timeout", "2")
    try:
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 20})
        assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
        r = httpx.post(server.url + "/generate", timeout=60,
                       json={"prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        deadline = time.time() + 10
        while httpx.get(server.url + "/health").json()["running"] and time.time() < deadline:
            time.sleep(0.1)
        assert httpx.get(server.url + "/health").json()["running"] == 0  # the timed-out request was aborted
    finally:
        server.stop()


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
