"""The OpenAI API: GET /v1/models, POST /v1/completions and /v1/chat/completions.

Completions and chat differ in how a prompt is made and how a choice looks; running the jobs,
streaming and the response around the choices are shared.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lmforge.engine import Completion, RequestOutput
from lmforge.serve.errors import ApiError
from lmforge.serve.generation import Job, chat_prompt, collect, prompts_of, start_stream
from lmforge.serve.openai_shapes import Logprobs, envelope, usage
from lmforge.serve.protocol import ChatCompletionRequest, CompletionRequest
from lmforge.serve.routes import admit
from lmforge.serve.state import ServerState
from lmforge.serve.streaming import sse_events

router = APIRouter()


def unsupported(body, *names: str) -> None:
    for name in names:
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported", "invalid_request_error", name)


def logprobs_of(state: ServerState) -> Logprobs:
    return Logprobs(lambda token_id: state.tokenizer.decode([token_id], skip_special_tokens=False))


@dataclass
class Reply:
    """What one OpenAI endpoint makes of its jobs: the choice shapes, whole and streamed."""

    endpoint: str  # the metrics label
    kind: str  # "text_completion" or "chat.completion"
    rid_prefix: str
    choice: Callable[[int, Completion], dict]
    stream_opening: Callable[[int], Iterable[dict]]
    stream_choices: Callable[[int, RequestOutput], Iterable[dict]]
    chunk_kind: str


async def respond(state: ServerState, request: Request, body, jobs: list[Job], prompt_lengths: list[int],
                  degraded: bool, reply: Reply):
    """Run the jobs; one JSON response, or server-sent chunks when body.stream."""
    rid, created = f"{reply.rid_prefix}-{uuid.uuid4().hex}", int(time.time())
    headers = state.admission.degraded_headers(degraded)
    if not body.stream:
        done = await collect(state, request, jobs)
        for c in done:
            state.metrics.requests.labels(reply.endpoint, c.finish_reason).inc()
        return JSONResponse({**envelope(reply.kind, rid, created, state.model_name,
                                        [reply.choice(i, c) for i, c in enumerate(done)]),
                             "usage": usage(prompt_lengths, done)}, headers=headers)
    first, streams = await start_stream(state, jobs)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict]) -> dict:
        return envelope(reply.chunk_kind, rid, created, state.model_name, choices)

    def events_for(index: int, output: RequestOutput):
        if output.finished:
            state.metrics.requests.labels(reply.endpoint, output.finish_reason).inc()
        return [chunk([c]) for c in reply.stream_choices(index, output)]

    def closing(completions: list[Completion]):
        return [{**chunk([]), "usage": usage(prompt_lengths, completions)}] if include_usage else []

    opening = [chunk([c]) for i in range(len(jobs)) for c in reply.stream_opening(i)]
    return StreamingResponse(sse_events(first, streams, len(jobs), events_for, opening, closing),
                             media_type="text/event-stream", headers=headers)


@router.get("/v1/models")
async def models(request: Request):
    state = admit(request, None)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                        "owned_by": "lmforge", "max_model_len": state.engine.max_seq_len}]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = admit(request, body.model)
    unsupported(body, "suffix", "logit_bias")
    prompts = await prompts_of(state, body.prompt)
    scored = body.logprobs is not None
    jobs, degraded = [], False
    for prompt_ids in prompts:
        max_tokens, capped = state.admission.budget(body.max_tokens, len(prompt_ids), state.engine.max_seq_len,
                                                    state.engine.num_waiting)
        degraded |= capped
        for i in range(body.n):
            jobs.append((prompt_ids, body.sampling_params(max_tokens, body.logprobs, scored and body.echo, i)))
    prompt_texts = [state.tokenizer.decode(p, skip_special_tokens=False) if body.echo else "" for p in prompts]
    logprobs = logprobs_of(state)

    def choice(index: int, c: Completion) -> dict:
        prompt_text = prompt_texts[index // body.n]
        lp = None
        if scored:
            lp = logprobs.echoed(c, jobs[index][0], prompt_text) if body.echo else \
                logprobs.completion(c.logprobs or [], c.token_ids, 0)
        return {"index": index, "text": (prompt_text if body.echo else "") + c.text, "logprobs": lp,
                "finish_reason": c.finish_reason}

    def opening(index: int):
        if body.echo:
            yield {"index": index, "text": prompt_texts[index // body.n], "logprobs": None, "finish_reason": None}

    def stream_choices(index: int, output: RequestOutput):
        lp = logprobs.completion(output.logprobs, output.new_token_ids, 0) if scored and output.logprobs else None
        if output.delta_text or output.finished or lp:
            yield {"index": index, "text": output.delta_text, "logprobs": lp,
                   "finish_reason": output.finish_reason if output.finished else None}

    reply = Reply("completions", "text_completion", "cmpl", choice, opening, stream_choices, "text_completion")
    return await respond(state, request, body, jobs, [len(p) for p in prompts], degraded, reply)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = admit(request, body.model)
    unsupported(body, "tools", "logit_bias")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "invalid_request_error", "top_logprobs")
    prompt_ids = await chat_prompt(state, [{"role": "system" if m.role == "developer" else m.role,
                                            "content": m.text()} for m in body.messages])
    max_tokens, degraded = state.admission.budget(body.max_completion_tokens or body.max_tokens, len(prompt_ids),
                                                  state.engine.max_seq_len, state.engine.num_waiting)
    alternatives = (body.top_logprobs or 0) if body.logprobs else None
    jobs = [(prompt_ids, body.sampling_params(max_tokens, alternatives, False, i)) for i in range(body.n)]
    logprobs = logprobs_of(state)

    def choice(index: int, c: Completion) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs.chat(c.logprobs or []) if body.logprobs else None,
                "finish_reason": c.finish_reason}

    def opening(index: int):
        yield {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def stream_choices(index: int, output: RequestOutput):
        lp = logprobs.chat(output.logprobs) if body.logprobs and output.logprobs else None
        if output.delta_text or lp:
            yield {"index": index, "delta": {"content": output.delta_text}, "logprobs": lp, "finish_reason": None}
        if output.finished:
            yield {"index": index, "delta": {}, "logprobs": None, "finish_reason": output.finish_reason}

    reply = Reply("chat", "chat.completion", "chatcmpl", choice, opening, stream_choices, "chat.completion.chunk")
    return await respond(state, request, body, jobs, [len(prompt_ids)], degraded, reply)
