"""The response bodies of the OpenAI API (and the seed's /generate), in one place.

Builders return plain dicts (what goes on the wire); the TypedDicts name their fields.
"""

from __future__ import annotations

import json
from typing import Callable, TypedDict

from lmforge.engine import Completion
from lmforge.sampling import TokenLogprob


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ErrorBody(TypedDict):
    error: dict


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> ErrorBody:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def usage(prompt_lengths: list[int], completions: list[Completion]) -> Usage:
    prompt = sum(prompt_lengths)
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def sse(data) -> str:
    """One server-sent event: a JSON body, or a bare string such as [DONE]."""
    return f"data: {json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data}\n\n"


def envelope(kind: str, rid: str, created: int, model: str, choices: list[dict]) -> dict:
    """The fields around `choices` of a completion, chat completion, or one of their chunks."""
    return {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}


class Logprobs:
    """Token log-probabilities in the two shapes OpenAI uses; `token_text` decodes one id."""

    def __init__(self, token_text: Callable[[int], str]):
        self.token_text = token_text

    def completion(self, entries: list[TokenLogprob | None], token_ids: list[int], offset: int) -> CompletionLogprobs:
        tokens, values, tops, offsets = [], [], [], []
        for token_id, entry in zip(token_ids, entries):
            text = self.token_text(token_id)
            tokens.append(text)
            values.append(None if entry is None else entry.logprob)
            tops.append(None if entry is None else {self.token_text(t): lp for t, lp in entry.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def echoed(self, c: Completion, prompt_ids: list[int], prompt_text: str) -> CompletionLogprobs:
        """Prompt and answer scored together (completions with echo)."""
        prompt_part = self.completion(c.prompt_logprobs or [None] * len(prompt_ids), prompt_ids, 0)
        rest = self.completion(c.logprobs or [], c.token_ids, len(prompt_text))
        return {k: prompt_part[k] + rest[k] for k in prompt_part}  # type: ignore[return-value]

    def chat(self, entries: list[TokenLogprob]) -> dict:
        def item(token_id, logprob):
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                            for e in entries]}


def generate_stats(c: Completion, model: str) -> dict:
    """The seed's /generate answer: the text and the figures a deployment engineer watches."""
    return {"text": c.text, "model": model, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
            "ttft_ms": 1e3 * c.ttft_s, "tpot_ms": 1e3 * c.tpot_s, "latency_ms": 1e3 * c.elapsed_s,
            "tokens_per_s": c.tokens_per_s}
