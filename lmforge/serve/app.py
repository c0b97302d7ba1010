"""The HTTP server: the seed's POST /generate and the OpenAI API over one AsyncEngine.

Handlers only translate: request bodies -> token ids + SamplingParams -> engine streams ->
response bodies. Errors use OpenAI's format; nothing a client sends yields a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.engine import Completion, Engine, RequestOutput
from lmforge.errors import LmforgeError, RequestError
from lmforge.sampling import SamplingParams, TokenLogprob
from lmforge.serve.async_engine import AsyncEngine, EngineOverloaded, EngineStopped
from lmforge.serve.limits import RateLimiter, ResponseCache, key_matches, retry_after_header
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, GenerateRequest,
                                    TokenizeRequest, error_body)

log = logging.getLogger("lmforge.serve")


@dataclass
class ServerSettings:
    model: str | None = None
    backend: str | None = None
    dtype: str | None = None
    served_model_name: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_seq_len: int | None = None
    prefill_chunk: int = 256
    api_keys: list[str] = field(default_factory=list)
    rate_limit: float | None = None  # requests per second per key (or per client address)
    request_timeout: float = 600.0
    degrade_at: float = 0.5  # share of the queue that turns on degradation
    degrade_max_tokens: int = 256
    cache_size: int = 256
    drain_timeout: float = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_type, self.param, self.code, self.headers = status, error_type, param, code, headers


class ServerState:
    def __init__(self, settings: ServerSettings, load: Callable):
        self.settings = settings
        self.load = load
        self.metrics = ServerMetrics()
        self.cache = ResponseCache(settings.cache_size)
        self.limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
        self.lm = None
        self.engine: AsyncEngine | None = None
        self.model_name = settings.served_model_name
        self.failure: str | None = None
        self.draining = False
        self.created = int(time.time())

    def start_loading(self) -> None:
        def work():
            try:
                lm = self.load()
                engine = Engine(lm.model, lm.tokenizer, max_batch=self.settings.max_batch,
                                max_seq_len=self.settings.max_seq_len, prefill_chunk=self.settings.prefill_chunk)
                self.metrics.kv_slots_total.set(self.settings.max_batch)
                async_engine = AsyncEngine(engine, self.settings.max_queue, self.metrics.observe_engine)
                async_engine.start()
                self.model_name = self.model_name or lm.name
                self.lm, self.engine = lm, async_engine
            except Exception as e:  # shown by /health and every request
                log.exception("loading the model failed")
                self.failure = f"the model failed to load: {e}"

        threading.Thread(target=work, name="lmforge-load", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining


# --- helpers ---------------------------------------------------------------------------------------

def _api_error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(str(e), e.error_type, e.param, e.code), status_code=e.status, headers=e.headers)


def _bad_request(e: RequestError) -> ApiError:
    return ApiError(400, str(e), "invalid_request_error", getattr(e, "param", None))


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data}\n\n"


async def _merged(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several request streams as outputs arrive; (index, output)."""
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


def create_app(settings: ServerSettings, load: Callable | None = None) -> FastAPI:
    if load is None:
        def load():
            import lmforge
            return lmforge.load(settings.model, settings.dtype, backend=settings.backend)
    state = ServerState(settings, load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        yield
        state.draining = True
        if state.engine is not None:
            await asyncio.to_thread(state.engine.shutdown, settings.drain_timeout)

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan)
    app.state.lmforge = state

    # --- errors ---------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return _api_error_response(e)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif not loc and first.get("type") in ("model_attributes_type", "dict_type"):
            message = "the request body must be a JSON object (send it with Content-Type: application/json)"
        return _api_error_response(ApiError(400, f"{param + ': ' if param else ''}{message}",
                                            "invalid_request_error", param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return _api_error_response(ApiError(e.status_code, str(e.detail), kind))

    @app.exception_handler(LmforgeError)
    async def on_lmforge_error(request: Request, e: LmforgeError):
        return _api_error_response(ApiError(400, str(e), "invalid_request_error", getattr(e, "param", None)))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception):
        log.exception("unexpected error")
        return _api_error_response(ApiError(500, "internal error (see the server log)", "server_error"))

    # --- gates ----------------------------------------------------------------------------------
    def admit(request: Request, model: str | None) -> None:
        """Auth, rate limit, readiness and model name; raises ApiError."""
        if settings.api_keys:
            header = request.headers.get("authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
            if not key_matches(given, settings.api_keys):
                state.metrics.rejected.labels("unauthorized").inc()
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                               code="invalid_api_key")
        else:
            given = None
        if state.limiter is not None:
            client = given or (request.client.host if request.client else "unknown")
            wait = state.limiter.acquire(client)
            if wait > 0:
                state.metrics.rejected.labels("rate_limited").inc()
                raise ApiError(429, f"rate limit exceeded; retry in {wait:.1f} s", "rate_limit_error",
                               code="rate_limit_exceeded", headers=retry_after_header(wait))
        if not state.ready:
            if state.failure:
                raise ApiError(503, state.failure, "server_error", code="model_failed")
            reason = "shutting down" if state.draining else "loading the model"
            raise ApiError(503, f"the server is {reason}", "server_error", code="unavailable",
                           headers=retry_after_header(5))
        if model is not None and model != state.model_name:
            raise ApiError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                           "not_found_error", "model", "model_not_found")

    def budget(requested: int | None, prompt_length: int) -> tuple[int, bool]:
        """max_tokens after the overload policy: (tokens, degraded)."""
        room = state.engine.engine.max_seq_len - prompt_length
        tokens = requested if requested is not None else max(1, room)
        waiting = state.engine.num_waiting
        overloaded = settings.degrade_at * settings.max_queue <= waiting < settings.max_queue  # full: a 429 follows
        if overloaded and tokens > settings.degrade_max_tokens:
            state.metrics.degraded.inc()
            return settings.degrade_max_tokens, True
        return tokens, False

    def headers_for(degraded: bool) -> dict:
        return {"X-Lmforge-Degraded": f"max_tokens capped at {settings.degrade_max_tokens} under load"} \
            if degraded else {}

    def encode_prompt(prompt) -> list[int]:
        tokenizer = state.lm.tokenizer
        if isinstance(prompt, str):
            return tokenizer.encode(prompt)
        if prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise RequestError("give the prompt as text or token ids", param="prompt")

    def prompts_of(prompt) -> list[list[int]]:
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [encode_prompt(prompt)]
        if len(prompt) > 16:
            raise RequestError("at most 16 prompts in one request", param="prompt")
        return [encode_prompt(p) for p in prompt]

    async def stream_request(prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """One request's outputs, from the response cache when it holds the answer."""
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
        except RequestError as e:
            raise _bad_request(e) from None

    async def collect(request: Request, jobs: list[tuple[list[int], SamplingParams]]) -> list[Completion]:
        """Run jobs to completion; abort them all if the client leaves or the timeout passes."""
        async def one(prompt_ids, params):
            completion = None
            async for output in stream_request(prompt_ids, params):
                completion = output.completion or completion
            return completion

        work = asyncio.ensure_future(asyncio.gather(*(one(p, sp) for p, sp in jobs)))

        async def watch():
            while not await request.is_disconnected():
                await asyncio.sleep(0.2)

        watcher = asyncio.ensure_future(watch())
        try:
            done, _ = await asyncio.wait({work, watcher}, timeout=settings.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
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
            raise ApiError(504, f"the request took longer than {settings.request_timeout:g} s", "timeout_error",
                           code="timeout")
        raise ApiError(499, "the client closed the connection", "client_closed")

    async def start_stream(jobs: list[tuple[list[int], SamplingParams]]):
        """Start the streams and wait for their first outputs, so errors become HTTP statuses."""
        streams = _merged([stream_request(p, sp) for p, sp in jobs])
        try:
            first = await asyncio.wait_for(anext(streams), settings.request_timeout)
        except BaseException:
            await streams.aclose()
            raise
        return first, streams

    def usage(prompt_lengths: list[int], completions: list[Completion]) -> dict:
        prompt = sum(prompt_lengths)
        generated = sum(c.completion_tokens for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    # --- logprobs in OpenAI's shapes -----------------------------------------------------------
    def token_text(token_id: int) -> str:
        return state.lm.tokenizer.decode([token_id], skip_special_tokens=False)

    def completion_logprobs(entries: list[TokenLogprob | None], token_ids: list[int], offset: int) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for token_id, entry in zip(token_ids, entries):
            text = token_text(token_id)
            tokens.append(text)
            values.append(None if entry is None else entry.logprob)
            tops.append(None if entry is None else {token_text(t): lp for t, lp in entry.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def chat_logprobs(entries: list[TokenLogprob]) -> dict:
        def item(token_id, logprob):
            text = token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                            for e in entries]}

    # --- endpoints --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.ready:
            return {"status": "ok", "model": state.model_name, "running": state.engine.num_running,
                    "waiting": state.engine.num_waiting}
        status = "failed" if state.failure else ("draining" if state.draining else "loading")
        return JSONResponse({"status": status, "detail": state.failure}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        if state.engine is not None:
            state.metrics.observe_engine(state.engine)  # gauges as of now, not as of the last step
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        admit(request, None)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "lmforge", "max_model_len": state.engine.engine.max_seq_len}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        admit(request, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt or messages", "invalid_request_error", "prompt")
        tokenizer = state.lm.tokenizer
        if body.messages is not None:
            ids = tokenizer.apply_chat_template([{"role": m.role, "content": m.text()} for m in body.messages])
        else:
            ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.engine.engine.max_seq_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        admit(request, body.model)
        vocab = state.lm.config.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise ApiError(400, f"token ids must be in [0, {vocab})", "invalid_request_error", "tokens")
        return {"prompt": state.lm.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        admit(request, body.model)
        prompt_ids = encode_prompt(body.prompt)
        max_tokens, degraded = budget(body.max_tokens, len(prompt_ids))
        params = body.sampling_params(max_tokens)
        headers = headers_for(degraded)

        def stats(c: Completion) -> dict:
            return {"text": c.text, "model": state.model_name, "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                    "ttft_ms": 1e3 * c.ttft_s, "tpot_ms": 1e3 * c.tpot_s, "latency_ms": 1e3 * c.elapsed_s,
                    "tokens_per_s": c.tokens_per_s}

        if not body.stream:
            completion = (await collect(request, [(prompt_ids, params)]))[0]
            state.metrics.requests.labels("generate", completion.finish_reason).inc()
            return JSONResponse(stats(completion), headers=headers)
        first, streams = await start_stream([(prompt_ids, params)])

        async def events():
            output = first[1]
            try:
                while True:
                    if output.delta_text:
                        yield _sse({"text": output.delta_text})
                    if output.finished:
                        state.metrics.requests.labels("generate", output.finish_reason).inc()
                        yield _sse({**stats(output.completion), "text": ""})
                        yield _sse("[DONE]")
                        return
                    output = (await anext(streams))[1]
            finally:
                await streams.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        admit(request, body.model)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", "invalid_request_error", "suffix")
        if body.logit_bias:
            raise ApiError(400, "logit_bias is not supported", "invalid_request_error", "logit_bias")
        prompts = prompts_of(body.prompt)
        scored = body.logprobs is not None
        jobs, degraded = [], False
        for prompt_ids in prompts:
            max_tokens, capped = budget(body.max_tokens, len(prompt_ids))
            degraded |= capped
            for i in range(body.n):
                jobs.append((prompt_ids, body.sampling_params(max_tokens, body.logprobs, scored and body.echo, i)))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_texts = [state.lm.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]

        def choice_logprobs(index: int, c: Completion) -> dict | None:
            if not scored:
                return None
            prompt_ids = jobs[index][0]
            if body.echo:
                prompt_part = completion_logprobs(c.prompt_logprobs or [None] * len(prompt_ids), prompt_ids, 0)
                rest = completion_logprobs(c.logprobs or [], c.token_ids, len(prompt_texts[index // body.n]))
                return {k: prompt_part[k] + rest[k] for k in prompt_part}
            return completion_logprobs(c.logprobs or [], c.token_ids, 0)

        if not body.stream:
            done = await collect(request, jobs)
            choices = [{"index": i, "text": (prompt_texts[i // body.n] if body.echo else "") + c.text,
                        "logprobs": choice_logprobs(i, c), "finish_reason": c.finish_reason}
                       for i, c in enumerate(done)]
            for c in done:
                state.metrics.requests.labels("completions", c.finish_reason).inc()
            return JSONResponse({"id": rid, "object": "text_completion", "created": created,
                                 "model": state.model_name, "choices": choices,
                                 "usage": usage([len(p) for p in prompts], done)}, headers=headers_for(degraded))
        first, streams = await start_stream(jobs)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[dict]) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                    "choices": choices}

        async def events():
            finished: dict[int, Completion] = {}
            item = first
            try:
                if body.echo:
                    for i in range(len(jobs)):
                        yield _sse(chunk([{"index": i, "text": prompt_texts[i // body.n], "logprobs": None,
                                           "finish_reason": None}]))
                while True:
                    index, output = item
                    logprobs = completion_logprobs(output.logprobs, output.new_token_ids, 0) \
                        if scored and output.logprobs else None
                    if output.finished:
                        finished[index] = output.completion
                        state.metrics.requests.labels("completions", output.finish_reason).inc()
                    if output.delta_text or output.finished or logprobs:
                        yield _sse(chunk([{"index": index, "text": output.delta_text, "logprobs": logprobs,
                                           "finish_reason": output.finish_reason if output.finished else None}]))
                    if len(finished) == len(jobs):
                        break
                    item = await anext(streams)
                if include_usage:
                    yield _sse({**chunk([]), "usage": usage([len(p) for p in prompts], list(finished.values()))})
                yield _sse("[DONE]")
            finally:
                await streams.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers_for(degraded))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        admit(request, body.model)
        for name in ("tools", "logit_bias"):
            if getattr(body, name):
                raise ApiError(400, f"{name} is not supported", "invalid_request_error", name)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "invalid_request_error", "top_logprobs")
        prompt_ids = state.lm.tokenizer.apply_chat_template(
            [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages])
        max_tokens, degraded = budget(body.max_completion_tokens or body.max_tokens, len(prompt_ids))
        alternatives = (body.top_logprobs or 0) if body.logprobs else None
        jobs = [(prompt_ids, body.sampling_params(max_tokens, alternatives, False, i)) for i in range(body.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            done = await collect(request, jobs)
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                        "logprobs": chat_logprobs(c.logprobs or []) if body.logprobs else None,
                        "finish_reason": c.finish_reason} for i, c in enumerate(done)]
            for c in done:
                state.metrics.requests.labels("chat", c.finish_reason).inc()
            return JSONResponse({"id": rid, "object": "chat.completion", "created": created,
                                 "model": state.model_name, "choices": choices,
                                 "usage": usage([len(prompt_ids)], done)}, headers=headers_for(degraded))
        first, streams = await start_stream(jobs)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[dict]) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                    "choices": choices}

        async def events():
            finished: dict[int, Completion] = {}
            item = first
            try:
                for i in range(len(jobs)):
                    yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                       "finish_reason": None}]))
                while True:
                    index, output = item
                    logprobs = chat_logprobs(output.logprobs) if body.logprobs and output.logprobs else None
                    if output.delta_text or logprobs:
                        yield _sse(chunk([{"index": index, "delta": {"content": output.delta_text},
                                           "logprobs": logprobs, "finish_reason": None}]))
                    if output.finished:
                        finished[index] = output.completion
                        state.metrics.requests.labels("chat", output.finish_reason).inc()
                        yield _sse(chunk([{"index": index, "delta": {}, "logprobs": None,
                                           "finish_reason": output.finish_reason}]))
                    if len(finished) == len(jobs):
                        break
                    item = await anext(streams)
                if include_usage:
                    yield _sse({**chunk([]), "usage": usage([len(prompt_ids)], list(finished.values()))})
                yield _sse("[DONE]")
            finally:
                await streams.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers_for(degraded))

    return app
