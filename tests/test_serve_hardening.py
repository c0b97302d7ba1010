"""What a hostile or careless client sends, in-process: every case a clean 4xx in OpenAI's shape,
and the server still answers afterwards."""

import asyncio
import time

import pytest
from serve_harness import run_app

import lmforge
from lmforge.api import LoadedModel


@pytest.fixture(scope="module")
def tiny_lm(tiny_gguf):
    return lmforge.load(tiny_gguf)


def assert_error(r, status: int, param: str | None = None, code: str | None = None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


def test_prompt_token_ids_out_of_the_vocabulary_are_400_and_the_connection_lives(tiny_lm):
    async def scenario(client, app):
        bad = [await client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2})
               for prompt in ([-1, 5], [10 ** 12], [[5], [-1]], [[5], [10 ** 12]])]
        bad.append(await client.post("/generate", json={"prompt": [10 ** 12], "max_tokens": 2}))
        after = await client.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6], "max_tokens": 2})
        return bad, after

    bad, after = run_app(tiny_lm, scenario)
    for r in bad:
        assert_error(r, 400, "prompt")
    assert after.status_code == 200


LONE_SURROGATE = [
    ("/v1/completions", '{"model": "tiny", "prompt": "a\\ud800b"}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": ["ok", "\\udfff"]}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": "a", "stop": ["\\ud800"]}', "stop"),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": '
                             '[{"type": "text", "text": "\\ud83d"}]}]}', "messages"),
    ("/generate", '{"prompt": "\\ud800"}', "prompt"),
    ("/tokenize", '{"prompt": "x\\ud800"}', "prompt"),
    ("/tokenize", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
]


def test_text_that_is_not_unicode_is_400_on_every_route(tiny_lm):
    async def scenario(client, app):
        replies = [await client.post(path, content=body.encode(), headers={"content-type": "application/json"})
                   for path, body, _ in LONE_SURROGATE]
        return replies, await client.post("/generate", json={"prompt": "fine", "max_tokens": 2})

    replies, after = run_app(tiny_lm, scenario)
    for (path, body, param), r in zip(LONE_SURROGATE, replies):
        assert_error(r, 400, param)
        assert "Unicode" in r.json()["error"]["message"], (path, body)
    assert after.status_code == 200


def test_stop_token_ids_outside_the_vocabulary_are_400(tiny_lm):
    async def scenario(client, app):
        return [await client.post("/generate", json={"prompt": "a", "stop_token_ids": [5, 10 ** 6]}),
                await client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "stop_token_ids": [-2]}),
                await client.post("/generate", json={"prompt": "a", "max_tokens": 2, "stop_token_ids": [5]})]

    too_big, negative, fine = run_app(tiny_lm, scenario)
    assert_error(too_big, 400, "stop_token_ids")
    assert_error(negative, 400, "stop_token_ids")
    assert fine.status_code == 200


def test_bodies_over_the_limit_are_413_unread(tiny_lm):
    big = b'{"prompt": "' + b"a" * 5000 + b'"}'

    async def chunks():
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    async def scenario(client, app):
        declared = await client.post("/generate", content=big, headers={"content-type": "application/json"})
        chunked = await client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        small = await client.post("/generate", json={"prompt": "a", "max_tokens": 2})
        return declared, chunked, small, (await client.get("/metrics")).text

    declared, chunked, small, metrics = run_app(tiny_lm, scenario, max_body_bytes=4096)
    assert_error(declared, 413, code="request_too_large")
    assert_error(chunked, 413, code="request_too_large")
    assert small.status_code == 200
    assert 'lmforge_requests_rejected_total{reason="too_large"} 2.0' in metrics


def test_a_prompt_too_long_for_the_window_is_refused_before_tokenizing(tiny_lm):
    window = tiny_lm.config.max_position_embeddings

    async def scenario(client, app):
        start = time.perf_counter()
        r = await client.post("/generate", json={"prompt": "word " * (10 * window), "max_tokens": 2})
        chat = await client.post("/tokenize", json={"messages": [{"role": "user", "content": "x" * 40 * window}]})
        return r, chat, time.perf_counter() - start

    r, chat, _ = run_app(tiny_lm, scenario)
    assert_error(r, 400, "prompt")
    assert "characters" in r.json()["error"]["message"]
    assert_error(chat, 400, "messages")


class SlowTokenizer:
    """The tiny model's tokenizer, but encoding takes a second (a huge prompt, as it were)."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, *args, **kwargs):
        time.sleep(1.0)
        return self.inner.encode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_tokenizing_does_not_hold_the_event_loop(tiny_lm):
    slow = LoadedModel(tiny_lm.name, tiny_lm.config, tiny_lm.model, SlowTokenizer(tiny_lm.tokenizer), None)
    order = []

    async def scenario(client, app):
        async def generate():
            await client.post("/generate", json={"prompt": "slow to tokenize", "max_tokens": 2})
            order.append("generate")

        async def health():
            await asyncio.sleep(0.2)  # the generate request is inside the tokenizer by now
            await client.get("/health")
            order.append("health")

        await asyncio.gather(generate(), health())

    run_app(slow, scenario)
    assert order == ["health", "generate"]


def test_with_keys_everything_but_health_needs_one_and_the_key_comes_first(tiny_lm):
    async def scenario(client, app):
        key = {"Authorization": "Bearer sesame"}
        return {
            "health": await client.get("/health"),
            "metrics": await client.get("/metrics"),
            "docs": await client.get("/docs"),
            "openapi": await client.get("/openapi.json"),
            "malformed": await client.post("/v1/completions", content=b"{nope",
                                           headers={"content-type": "application/json"}),
            "too large": await client.post("/generate", content=b"x" * 8000),
            "metrics with key": await client.get("/metrics", headers=key),
            "malformed with key": await client.post("/v1/completions", content=b"{nope",
                                                    headers={**key, "content-type": "application/json"}),
        }

    r = run_app(tiny_lm, scenario, api_keys=["sesame"], max_body_bytes=4096)
    assert r["health"].status_code == 200
    for name in ("metrics", "docs", "openapi", "malformed", "too large"):
        assert_error(r[name], 401, code="invalid_api_key")
    assert r["metrics with key"].status_code == 200 and "lmforge_requests_rejected" in r["metrics with key"].text
    assert_error(r["malformed with key"], 400)
