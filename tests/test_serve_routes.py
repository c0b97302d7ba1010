"""Every route of the server, in-process (ASGI transport): the tiny model for shapes, limits and
errors, the embedded one where the answer's content matters (chat template, "Paris")."""

import asyncio
import json
import threading

import pytest
from serve_harness import run_app, sse_payloads

import lmforge

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_lm(tiny_gguf):
    return lmforge.load(tiny_gguf)


def test_openai_chat_streaming_and_not_with_the_official_client(embedded):
    from openai import AsyncOpenAI

    async def scenario(client, app):
        oai = AsyncOpenAI(base_url="http://lmforge/v1", api_key="unused", http_client=client)
        answer = await oai.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0,
                                                   max_tokens=20)
        stream = await oai.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0,
                                                   max_tokens=20, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        models = await oai.models.list()
        return answer, chunks, models

    answer, chunks, models = run_app(embedded, scenario)
    assert "Paris" in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 10
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert [m.id for m in models.data] == ["smollm2-135m"]


def test_health_is_503_while_loading_then_200(tiny_lm):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return tiny_lm

    async def scenario(client, app):
        loading = await client.get("/health")
        refused = await client.post("/generate", json={"prompt": "hi"})
        release.set()
        while (await client.get("/health")).status_code != 200:
            await asyncio.sleep(0.01)
        return loading, refused, (await client.get("/health")).json()

    loading, refused, ready = run_app(tiny_lm, scenario, load=slow_load)
    assert loading.status_code == 503 and loading.json()["status"] == "loading"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
    assert ready == {"status": "ok", "model": "tiny", "running": 0, "waiting": 0}


def test_a_model_that_fails_to_load_says_why(tiny_lm):
    def broken():
        raise RuntimeError("disk on fire")

    async def scenario(client, app):
        return await client.get("/health"), await client.post("/v1/completions", json={"model": "x", "prompt": "a"})

    async def wait_then(client, app):
        while app.state.lmforge.failure is None:
            await asyncio.sleep(0.01)
        return await scenario(client, app)

    health, request = run_app(tiny_lm, wait_then, load=broken)
    assert health.status_code == 503 and "disk on fire" in health.json()["detail"]
    assert request.status_code == 503 and request.json()["error"]["code"] == "model_failed"


def _hits(metrics: str) -> float:
    return float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("lmforge_response_cache_hits_total")))


def test_identical_deterministic_requests_come_from_the_cache(tiny_lm):
    body = {"model": "tiny", "prompt": "Cache me", "max_tokens": 6, "temperature": 0}

    async def scenario(client, app):
        first = (await client.post("/v1/completions", json=body)).json()
        second = (await client.post("/v1/completions", json=body)).json()
        after_two = _hits((await client.get("/metrics")).text)
        for _ in range(2):  # sampled without a seed: never cached
            await client.post("/v1/completions", json={**body, "temperature": 0.9})
        return first, second, after_two, _hits((await client.get("/metrics")).text)

    first, second, after_two, after_four = run_app(tiny_lm, scenario)
    assert after_two == after_four == 1 and first["choices"][0]["text"] == second["choices"][0]["text"]


def test_completions_n_seed_stop_logprobs_echo_and_streaming(tiny_lm):
    async def post(client, **body):
        r = await client.post("/v1/completions", json={"model": "tiny", **body})
        assert r.status_code == 200, r.text
        return r

    async def scenario(client, app):
        sampled = {"prompt": "Once upon", "max_tokens": 12, "n": 2, "seed": 7, "temperature": 1.0, "top_k": 40,
                   "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True}
        out, again = [(await post(client, **sampled)).json() for _ in range(2)]
        plain = (await post(client, prompt="The sky", max_tokens=8, temperature=0, ignore_eos=True)).json()
        cut_at = plain["choices"][0]["text"][3:5]
        stopped = (await post(client, prompt="The sky", max_tokens=8, temperature=0, ignore_eos=True,
                              stop=[cut_at])).json()
        scored = (await post(client, prompt="abc", max_tokens=1, temperature=0, echo=True, logprobs=2)).json()
        streamed = await post(client, prompt="The sky", max_tokens=8, temperature=0, ignore_eos=True, stream=True)
        return out, again, plain, cut_at, stopped, scored, streamed.text

    out, again, plain, cut_at, stopped, scored, streamed = run_app(tiny_lm, scenario)
    assert [c["text"] for c in out["choices"]] == [c["text"] for c in again["choices"]]
    assert [c["index"] for c in out["choices"]] == [0, 1] and out["usage"]["completion_tokens"] == 24
    text = plain["choices"][0]["text"]
    assert stopped["choices"][0]["text"] == text[: text.index(cut_at)]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    choice = scored["choices"][0]
    assert choice["text"].startswith("abc") and choice["logprobs"]["token_logprobs"][0] is None
    assert all(v <= 0 for v in choice["logprobs"]["token_logprobs"][1:]) and len(choice["logprobs"]["tokens"]) == 4
    # two alternatives per position (byte tokens that decode alike share one key of OpenAI's dict)
    assert 1 <= len(choice["logprobs"]["top_logprobs"][1]) <= 2
    events = sse_payloads(streamed)
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text


def test_seed_generate_contract(tiny_lm):
    body = {"prompt": "The capital", "max_tokens": 8, "temperature": 0, "ignore_eos": True}

    async def scenario(client, app):
        whole = (await client.post("/generate", json=body)).json()
        streamed = (await client.post("/generate", json={**body, "stream": True})).text
        by_ids = (await client.post("/generate", json={**body, "prompt": [5, 6, 7]})).json()
        return whole, streamed, by_ids

    whole, streamed, by_ids = run_app(tiny_lm, scenario)
    assert whole["completion_tokens"] == 8 and whole["ttft_ms"] > 0 and whole["tpot_ms"] > 0
    assert whole["finish_reason"] == "length" and whole["model"] == "tiny" and by_ids["prompt_tokens"] == 3
    events = sse_payloads(streamed)
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert "".join(json.loads(e)["text"] for e in events[:-2]) == whole["text"] and final["completion_tokens"] == 8


def test_concurrent_greedy_requests_match_one_by_one(tiny_lm):
    prompts = [f"Question {i}: name a colour" for i in range(8)]

    def body(p):
        return {"model": "tiny", "prompt": p, "max_tokens": 16, "temperature": 0, "ignore_eos": True}

    async def scenario(client, app):
        alone = [(await client.post("/v1/completions", json=body(p))).json()["choices"][0]["text"]
                 for p in prompts[:3]]
        together = await asyncio.gather(*(client.post("/v1/completions", json={**body(p), "seed": 1})
                                          for p in prompts))  # a seed: not answered from the cache
        return alone, [r.json()["choices"][0]["text"] for r in together]

    alone, together = run_app(tiny_lm, scenario, max_batch=4)
    assert together[:3] == alone


BAD_PARAMETERS = [
    ({"prompt": "x", "temperature": -1}, "temperature"), ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10 ** 6}, "max_tokens"), ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"), ({"prompt": "x", "seed": -3}, "seed"),
    ({"prompt": "x", "min_tokens": 20, "max_tokens": 5}, "min_tokens"), ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": [999999]}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "repetition_penalty": 0}, None),
    ({}, "prompt"), ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": [[1], [2]] * 9}, "prompt"),
]


def test_out_of_range_parameters_are_400_naming_them(tiny_lm):
    async def scenario(client, app):
        return [await client.post("/v1/completions", json={"model": "tiny", **payload}) for payload, _ in BAD_PARAMETERS]

    for (payload, param), r in zip(BAD_PARAMETERS, run_app(tiny_lm, scenario)):
        assert r.status_code == 400, (payload, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        if param:
            assert error["param"] == param or error["param"].startswith(param), (payload, error)


def test_other_client_errors_and_the_tokenizer_routes(tiny_lm):
    async def scenario(client, app):
        return {
            "bad json": await client.post("/v1/chat/completions", content=b"{not json",
                                          headers={"content-type": "application/json"}),
            "wrong model": await client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": QUESTION}),
            "bad role": await client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "x"}]}),
            "no template": await client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION}),
            "tools": await client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION,
                                                                     "tools": [{"type": "function"}]}),
            "nowhere": await client.get("/nowhere"),
            "tokens": await client.post("/tokenize", json={"prompt": "Hello world"}),
            "both": await client.post("/tokenize", json={"prompt": "a", "messages": QUESTION}),
            "empty chat": await client.post("/tokenize", json={"messages": []}),
            "bad ids": await client.post("/detokenize", json={"tokens": [-1]}),
            "array": await client.post("/generate", json=[1, 2]),
        }

    r = run_app(tiny_lm, scenario)
    assert r["bad json"].status_code == 400 and "JSON" in r["bad json"].json()["error"]["message"]
    assert r["wrong model"].status_code == 404 and r["wrong model"].json()["error"]["code"] == "model_not_found"
    assert r["bad role"].status_code == 400 and r["no template"].status_code == 400
    assert r["tools"].status_code == 400 and r["tools"].json()["error"]["param"] == "tools"
    assert r["nowhere"].status_code == 404 and r["nowhere"].json()["error"]["type"] == "not_found_error"
    assert r["both"].status_code == 400 and r["empty chat"].status_code == 400 and r["bad ids"].status_code == 400
    assert "JSON object" in r["array"].json()["error"]["message"]

    async def detokenize(client, app):
        return (await client.post("/detokenize", json={"tokens": r["tokens"].json()["tokens"]})).json()

    assert r["tokens"].json()["max_model_len"] == tiny_lm.config.max_position_embeddings
    assert run_app(tiny_lm, detokenize)["prompt"] == "Hello world"


def test_keys_are_checked_before_anything_else(tiny_lm):
    async def scenario(client, app):
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        return [await client.post("/v1/completions", json=body),
                await client.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}),
                await client.post("/v1/completions", json=body, headers={"X-API-Key": "sesame"}),
                await client.post("/v1/completions", json=body, headers={"Authorization": "Bearer other"}),
                await client.get("/metrics", headers={"X-API-Key": "other"})]

    *replies, metrics = run_app(tiny_lm, scenario, api_keys=["sesame", "other"])
    assert [r.status_code for r in replies] == [401, 401, 200, 200]
    assert replies[0].json()["error"]["code"] == "invalid_api_key"
    assert 'lmforge_requests_rejected_total{reason="unauthorized"} 2.0' in metrics.text


def test_queue_limit_degradation_and_rate_limit(embedded):
    body = {"model": "smollm2-135m", "prompt": "Count to one hundred:", "max_tokens": 60, "ignore_eos": True}

    async def burst(client, stagger: float, count: int, payload, headers=None):
        async def send(i):
            await asyncio.sleep(i * stagger)
            return await client.post("/v1/completions", json=payload, headers=headers or {})
        return await asyncio.gather(*(send(i) for i in range(count)))

    async def scenario(client, app):
        # One request runs (one slot), the next waits; the third finds the queue half full and has its
        # max_tokens capped (and is told so); the fourth finds it full: 429 with Retry-After.
        first = await burst(client, 0.3, 4, body, {"Authorization": "Bearer a"})
        # Six requests a minute per key: another key's burst of 8 gets 2 rate-limit 429s.
        second = await burst(client, 0.0, 8, {**body, "max_tokens": 1}, {"Authorization": "Bearer b"})
        return first, second, (await client.get("/metrics", headers={"Authorization": "Bearer a"})).text

    first, second, metrics = run_app(embedded, scenario, max_batch=1, max_queue=2, rate_limit=6 / 60,
                                     degrade_max_tokens=10, api_keys=["a", "b"])
    assert [r.status_code for r in first] == [200, 200, 200, 429], [r.text for r in first]
    assert [("x-lmforge-degraded" in r.headers) for r in first[:3]] == [False, False, True]
    assert first[2].json()["usage"]["completion_tokens"] == 10
    assert first[3].json()["error"]["code"] == "queue_full" and int(first[3].headers["Retry-After"]) >= 1
    limited = [r for r in second if r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"]
    assert len(limited) == 2 and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert 'lmforge_requests_rejected_total{reason="queue_full"}' in metrics
    assert "lmforge_requests_degraded_total 1.0" in metrics


def test_timeouts_abort_the_request_and_the_onnxruntime_backend_serves(embedded):
    onnx_lm = lmforge.load("smollm2-135m", backend="onnxruntime")

    async def scenario(client, app):
        answer = await client.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": QUESTION,
                                                                 "temperature": 0, "max_tokens": 20})
        slow = await client.post("/generate", json={"prompt": "Tell me everything.", "max_tokens": 4000,
                                                    "ignore_eos": True})
        for _ in range(200):
            if (await client.get("/health")).json()["running"] == 0:
                break
            await asyncio.sleep(0.05)
        return answer, slow, (await client.get("/health")).json()

    answer, slow, health = run_app(onnx_lm, scenario, request_timeout=2)
    assert answer.status_code == 200 and "Paris" in answer.json()["choices"][0]["message"]["content"]
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
    assert health["running"] == 0  # the timed-out request was aborted
