"""Running a request's generation jobs for a route: prompts to ids, the response cache, engine
errors as HTTP statuses, client disconnects and timeouts.

A job is (prompt ids, SamplingParams): one choice of a response (`n` choices, several prompts).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import Request

from lmforge.engine import Completion, RequestOutput
from lmforge.errors import RequestError
from lmforge.sampling import SamplingParams
from lmforge.serve.async_engine import EngineFailed, EngineOverloaded, EngineStopped
from lmforge.serve.errors import ApiError, bad_request
from lmforge.serve.limits import ResponseCache, retry_after_header
from lmforge.serve.protocol import check_prompt_characters
from lmforge.serve.state import ServerState

MAX_PROMPTS = 16
Job = tuple[list[int], SamplingParams]


async def prompts_of(state: ServerState, prompt) -> list[list[int]]:
    """One prompt (text or ids) or a list of them -> token ids of each. Tokenizing runs on a
    worker thread: a long prompt must not hold the event loop (and every other client)."""
    engine = state.engine
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts in one request", param="prompt")
    check_prompt_characters([p for p in prompts if isinstance(p, str)], engine.max_seq_len)
    return await asyncio.to_thread(lambda: [engine.encode_prompt(p) for p in prompts])


async def chat_prompt(state: ServerState, messages: list[dict]) -> list[int]:
    """The chat template applied to `messages` (on a worker thread, as prompts_of)."""
    check_prompt_characters([m["content"] for m in messages], state.engine.max_seq_len, "messages")
    return await asyncio.to_thread(state.tokenizer.apply_chat_template, messages)


async def stream_job(state: ServerState, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
    """One job's outputs, from the response cache when it holds the answer."""
    key = (tuple(prompt_ids), params) if ResponseCache.cacheable(params) else None
    cached = state.cache.get(key) if key is not None else None
    if cached is not None:
        state.metrics.cache_hits.inc()
        yield RequestOutput(cached.request_id, list(cached.token_ids), cached.text, True, cached.finish_reason,
                            cached, cached.logprobs)
        return
    if key is not None:
        state.metrics.cache_misses.inc()
    try:
        async for output in state.engine.generate(prompt_ids, params):
            if output.completion is not None:
                state.metrics.observe_completion(output.completion)
                if key is not None:
                    state.cache.put(key, output.completion)
            yield output
    except EngineOverloaded as e:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, str(e), "rate_limit_error", code="queue_full",
                       headers=retry_after_header(e.retry_after)) from None
    except EngineStopped as e:
        raise ApiError(503, str(e), "server_error", code="unavailable") from None
    except EngineFailed as e:
        raise ApiError(500, str(e), "server_error", code="engine_failed") from None
    except RequestError as e:
        raise bad_request(e) from None


async def merged(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several job streams as outputs arrive; (index, output)."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index, stream):
        try:
            async for output in stream:
                await queue.put((index, output))
        except BaseException as e:  # handed to the consumer
            await queue.put((index, e))
        finally:
            await queue.put((index, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # no task is inside a stream any more
        for stream in streams:
            await stream.aclose()  # aborts requests still running (their clients left)


async def collect(state: ServerState, request: Request, jobs: list[Job]) -> list[Completion]:
    """Run jobs to completion; abort them all if the client leaves or the timeout passes."""
    async def one(prompt_ids, params):
        completion = None
        async for output in stream_job(state, prompt_ids, params):
            completion = output.completion or completion
        return completion

    work = asyncio.ensure_future(asyncio.gather(*(one(p, sp) for p, sp in jobs)))

    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)

    watcher = asyncio.ensure_future(watch())
    timeout = state.settings.request_timeout
    try:
        done, _ = await asyncio.wait({work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work in done:
        return work.result()
    work.cancel()
    try:
        await work
    except (asyncio.CancelledError, Exception):
        pass
    if not done:
        raise ApiError(504, f"the request took longer than {timeout:g} s", "timeout_error", code="timeout")
    raise ApiError(499, "the client closed the connection", "client_closed")


async def start_stream(state: ServerState, jobs: list[Job]):
    """Start the job streams and wait for their first output, so errors become HTTP statuses;
    (first (index, output), the merged stream)."""
    streams = merged([stream_job(state, p, sp) for p, sp in jobs])
    try:
        first = await asyncio.wait_for(anext(streams), state.settings.request_timeout)
    except BaseException:
        await streams.aclose()
        raise
    return first, streams
