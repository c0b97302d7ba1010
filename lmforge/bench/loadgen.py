"""A load generator for any OpenAI-compatible server (lmforge, vLLM, llama.cpp's server).

Closed loop: C clients, each sends its next request when the last one ends. Open loop: requests
arrive as a Poisson process at R per second, whatever the server's state. Every request streams
and is timed on arrival of each content chunk.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from lmforge.bench.records import RequestRecord
from lmforge.errors import LmforgeError


@dataclass
class LoadSpec:
    url: str                          # the server's base URL, e.g. http://127.0.0.1:8000
    model: str
    prompts: list[str]
    max_tokens: int = 64
    endpoint: str = "completions"     # or "chat"
    temperature: float = 0.0
    ignore_eos: bool = False          # vLLM, lmforge and llama.cpp take it; plain OpenAI does not
    api_key: str | None = None
    timeout_s: float = 300.0
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.endpoint not in ("completions", "chat"):
            raise LmforgeError(f"unknown endpoint {self.endpoint!r}; choose completions or chat")
        if not self.prompts:
            raise LmforgeError("no prompts to send")
        if self.max_tokens < 1:
            raise LmforgeError("max tokens must be at least 1")
        self.url = self.url.rstrip("/").removesuffix("/v1")


def random_prompts(tokenizer, count: int, tokens: int, seed: int = 0) -> list[str]:
    """Prompts of about `tokens` tokens each: random ids of ordinary text tokens, decoded."""
    if tokens < 1 or count < 1:
        raise LmforgeError("prompt tokens and the number of prompts must be positive")
    rng = random.Random(seed)
    vocab = tokenizer.vocab_size
    # decoding drops special tokens; the server counts the prompt's real tokens (usage)
    return [tokenizer.decode([rng.randrange(100, vocab) for _ in range(tokens)]) for _ in range(count)]


def file_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a text file."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"{p}: no such prompts file")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{p}: not UTF-8 text ({e.reason})") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise LmforgeError(f"{p}: no prompts in the file (one prompt per line)")
    return prompts


def _headers(spec: LoadSpec) -> dict:
    return {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}


def _body(spec: LoadSpec, prompt: str) -> tuple[str, dict]:
    body = {"model": spec.model, "max_tokens": spec.max_tokens, "temperature": spec.temperature,
            "stream": True, "stream_options": {"include_usage": True}, **spec.extra_body}
    if spec.ignore_eos:
        body["ignore_eos"] = True
    if spec.endpoint == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return choice["delta"].get("content") or ""
    return choice.get("text") or ""


async def send_one(client: httpx.AsyncClient, spec: LoadSpec, index: int, run_start: float) -> RequestRecord:
    path, body = _body(spec, spec.prompts[index % len(spec.prompts)])
    start = time.perf_counter()
    record = RequestRecord(index=index, sent_s=start - run_start)
    chunks = 0
    usage = None
    done = False
    try:
        async with client.stream("POST", spec.url + path, json=body, headers=_headers(spec),
                                 timeout=spec.timeout_s) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                record.error, record.error_detail = f"http {response.status_code}", text[:300]
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    record.error, record.error_detail = "error in stream", str(chunk["error"])[:300]
                    return record
                if _chunk_text(chunk):
                    now = time.perf_counter() - start
                    record.chunk_times_s.append(now)
                    if record.ttft_s is None:
                        record.ttft_s = now
                    chunks += 1
                usage = chunk.get("usage") or usage
    except httpx.ConnectError as e:
        record.error, record.error_detail = "connect", str(e)[:300]
        return record
    except httpx.TimeoutException as e:
        record.error, record.error_detail = "timeout", f"{type(e).__name__} after {spec.timeout_s:g} s"
        return record
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        record.error, record.error_detail = "bad response", f"{type(e).__name__}: {e}"[:300]
        return record
    record.e2e_s = time.perf_counter() - start
    if not done:
        record.error, record.error_detail = "incomplete stream", "the stream ended without [DONE]"
    elif chunks == 0:
        record.error, record.error_detail = "empty answer", "no content chunk arrived"
    # usage counts tokens exactly; without it, each content chunk is taken as one token
    record.output_tokens = int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else chunks
    record.prompt_tokens = int(usage["prompt_tokens"]) if usage and "prompt_tokens" in usage else None
    return record


def check_reachable(url: str, api_key: str | None = None, timeout_s: float = 10.0) -> list[str]:
    """Fail early and clearly when nothing answers at the URL; the model ids it lists (maybe none)."""
    base = url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(base + "/v1/models", timeout=timeout_s,
                             headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    except httpx.ConnectError as e:
        raise LmforgeError(f"cannot reach {base}: {e}") from None
    except httpx.TimeoutException:
        raise LmforgeError(f"{base} did not answer within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise LmforgeError(f"cannot talk to {base}: {e}") from None
    try:
        return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        return []


async def closed_loop(spec: LoadSpec, concurrency: int, num_requests: int, first_index: int = 0,
                      on_done: Callable[[RequestRecord], None] | None = None) -> tuple[list[RequestRecord], float]:
    """C clients, each sending its next request when the last ends; (records, wall seconds)."""
    if concurrency < 1 or num_requests < 1:
        raise LmforgeError("concurrency and the number of requests must be positive")
    pending = iter(range(first_index, first_index + num_requests))
    records: list[RequestRecord] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        start = time.perf_counter()

        async def client_loop():
            for index in pending:
                record = await send_one(client, spec, index, start)
                records.append(record)
                if on_done:
                    on_done(record)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return records, time.perf_counter() - start


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process at `rate` per second."""
    if rate <= 0:
        raise LmforgeError("the request rate must be positive")
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    return times


async def open_loop(spec: LoadSpec, rate: float, num_requests: int, first_index: int = 0, seed: int = 0,
                    max_concurrency: int | None = None,
                    on_done: Callable[[RequestRecord], None] | None = None) -> tuple[list[RequestRecord], float]:
    """Requests sent at Poisson arrival times, not waiting for answers; (records, wall seconds)."""
    if num_requests < 1:
        raise LmforgeError("the number of requests must be positive")
    arrivals = poisson_arrivals(rate, num_requests, seed)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    records: list[RequestRecord] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as client:
        start = time.perf_counter()

        async def fire(index: int, at: float):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            if gate:
                async with gate:
                    record = await send_one(client, spec, index, start)
            else:
                record = await send_one(client, spec, index, start)
            records.append(record)
            if on_done:
                on_done(record)

        await asyncio.gather(*(fire(first_index + i, at) for i, at in enumerate(arrivals)))
        return records, time.perf_counter() - start
