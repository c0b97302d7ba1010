"""The seed's contract: POST /generate {"prompt": ..., "max_tokens": ...} -> text and timings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lmforge.serve.generation import collect, prompts_of, start_stream
from lmforge.serve.openai_shapes import generate_stats
from lmforge.serve.protocol import GenerateRequest
from lmforge.serve.routes import admit
from lmforge.serve.streaming import sse_events

router = APIRouter()


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    state = admit(request, body.model)
    prompt_ids = (await prompts_of(state, body.prompt))[0]
    max_tokens, degraded = state.admission.budget(body.max_tokens, len(prompt_ids), state.engine.max_seq_len,
                                                  state.engine.num_waiting)
    jobs = [(prompt_ids, body.sampling_params(max_tokens))]
    headers = state.admission.degraded_headers(degraded)
    if not body.stream:
        completion = (await collect(state, request, jobs))[0]
        state.metrics.requests.labels("generate", completion.finish_reason).inc()
        return JSONResponse(generate_stats(completion, state.model_name), headers=headers)
    first, streams = await start_stream(state, jobs)

    def events_for(index, output):
        if output.delta_text:
            yield {"text": output.delta_text}
        if output.finished:
            state.metrics.requests.labels("generate", output.finish_reason).inc()
            yield {**generate_stats(output.completion, state.model_name), "text": ""}

    return StreamingResponse(sse_events(first, streams, 1, events_for), media_type="text/event-stream",
                             headers=headers)
