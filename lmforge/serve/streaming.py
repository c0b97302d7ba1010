"""Server-sent events of running jobs, shared by every streaming route (completions, chat, /generate)."""

from __future__ import annotations

from typing import AsyncIterator, Callable, Iterable

from lmforge.engine import Completion, RequestOutput
from lmforge.serve.errors import ApiError
from lmforge.serve.openai_shapes import error_body, sse


async def sse_events(first: tuple[int, RequestOutput], streams: AsyncIterator[tuple[int, RequestOutput]], jobs: int,
                     events_for: Callable[[int, RequestOutput], Iterable[dict]], opening: Iterable[dict] = (),
                     closing: Callable[[list[Completion]], Iterable[dict]] | None = None) -> AsyncIterator[str]:
    """`opening` payloads; then for each output (job index, output) the payloads `events_for` makes
    of it; once all `jobs` have finished, the payloads `closing` makes of their completions; [DONE].
    Leaving early (the client went away) aborts the jobs still running."""
    finished: dict[int, Completion] = {}
    item = first
    try:
        for payload in opening:
            yield sse(payload)
        while True:
            index, output = item
            if output.finished:
                finished[index] = output.completion
            for payload in events_for(index, output):
                yield sse(payload)
            if len(finished) == jobs:
                break
            try:
                item = await anext(streams)
            except ApiError as e:  # the server stopped it (shutdown, engine failure): say so, then end
                yield sse(error_body(str(e), e.error_type, e.param, e.code))
                yield sse("[DONE]")
                return
        for payload in (closing([finished[i] for i in sorted(finished)]) if closing else ()):
            yield sse(payload)
        yield sse("[DONE]")
    finally:
        await streams.aclose()
