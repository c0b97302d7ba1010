"""The step loop: scheduler plan -> model forward passes over the slot cache -> sampled tokens.

`Engine.step()` is the one primitive; `generate` and `stream` are loops over it, and a
server can drive it from its own thread.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from lmforge.engine.scheduler import Scheduler, StepPlan
from lmforge.decoder import Decoder
from lmforge.errors import RequestError
from lmforge.kv_cache import KVCache
from lmforge.sampling import BatchSampler, SamplingParams, TokenLogprob, token_logprobs
from lmforge.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class Completion:
    """A finished request."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    ttft_s: float
    tpot_s: float
    elapsed_s: float
    logprobs: list[TokenLogprob] | None = None  # one per output token, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # None for the first prompt token

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        decode_time = self.elapsed_s - self.ttft_s
        if self.completion_tokens <= 1 or decode_time <= 0:
            return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (self.completion_tokens - 1) / decode_time


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    delta_text: str
    finished: bool
    finish_reason: str | None = None
    completion: Completion | None = None  # set on the last output of a request
    logprobs: list[TokenLogprob] | None = None  # for new_token_ids, when the request asked


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    arrival: float
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # all text produced so far (stop strings cut off)
    emitted: int = 0  # characters of `text` already handed out
    slot: int | None = None
    finish_reason: str | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    stop_string_hit: bool = False
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def history(self) -> list[int]:
        return self.prompt_ids + self.output_ids


class Engine:
    def __init__(self, model: Decoder, tokenizer: Tokenizer, *, max_batch: int = 8, max_seq_len: int | None = None,
                 prefill_chunk: int = 512, kv_dtype: torch.dtype | None = None):
        config = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_len = min(max_seq_len or config.max_position_embeddings, config.max_position_embeddings)
        self.cache = KVCache(config, max_batch, self.max_seq_len, kv_dtype or model.dtype)
        self.scheduler = Scheduler(max_batch, prefill_chunk)
        self.sampler = BatchSampler()
        self.eos_token_ids = set(tokenizer.eos_token_ids) | set(config.eos_token_ids)
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count()

    # --- requests -----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return ids

    def check_fits(self, prompt_length: int, params: SamplingParams) -> None:
        if prompt_length >= self.max_seq_len:
            raise RequestError(f"the prompt has {prompt_length} tokens; the context window is "
                               f"{self.max_seq_len} tokens", param="prompt")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in params.stop_token_ids):
            raise RequestError(f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")
        if prompt_length + params.max_tokens > self.max_seq_len:
            raise RequestError(f"prompt ({prompt_length} tokens) + max_tokens ({params.max_tokens}) "
                               f"exceeds the context window of {self.max_seq_len} tokens", param="max_tokens")

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt)
        self.check_fits(len(ids), params)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        self._requests[request_id] = _Request(request_id, ids, params, self.tokenizer.detokenizer(ids),
                                              time.perf_counter())
        self.scheduler.add(request_id, len(ids))
        return request_id

    def abort(self, request_id: str) -> None:
        """Drop a request and free its slot at once (e.g. its client went away)."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        self.scheduler.finish(request_id)
        self._release(request)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    # --- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        for request_id in plan.admitted:
            self._requests[request_id].slot = self.cache.allocate()
        rows, logits = self._forward(plan)
        self.scheduler.record(plan)
        if not rows:
            return []
        requests = [self._requests[r] for r in rows]
        tokens = self.sampler(
            logits, [r.params for r in requests], rows, [r.history for r in requests],
            [len(r.prompt_ids) for r in requests], [self._banned(r) for r in requests])
        scored = self._score(logits, tokens, requests)
        now = time.perf_counter()
        return [self._append(request, int(token), now, scored.get(i))
                for i, (request, token) in enumerate(zip(requests, tokens))]

    @staticmethod
    def _score(logits: torch.Tensor, tokens: torch.Tensor, requests: list[_Request]) -> dict[int, TokenLogprob]:
        """Log-probabilities of the sampled tokens, for the rows whose request asked for them."""
        rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        if not rows:
            return {}
        alternatives = max(requests[i].params.logprobs for i in rows)
        index = torch.tensor(rows)
        found = token_logprobs(logits[index], tokens[index], alternatives)
        return {row: TokenLogprob(lp.token_id, lp.logprob, lp.top[: requests[row].params.logprobs])
                for row, lp in zip(rows, found)}

    @torch.inference_mode()
    def _forward(self, plan: StepPlan) -> tuple[list[str], torch.Tensor | None]:
        rows: list[str] = []
        parts: list[torch.Tensor] = []
        if plan.decode:
            decode = sorted(plan.decode, key=lambda r: self._requests[r].slot)
            requests = [self._requests[r] for r in decode]
            tokens = torch.tensor([[r.output_ids[-1]] for r in requests])
            positions = torch.tensor([[len(r.prompt_ids) + len(r.output_ids) - 1] for r in requests])
            view = self.cache.view([r.slot for r in requests], positions)
            parts.append(self.model(tokens, positions, view)[:, -1])
            rows += decode
        for chunk in plan.prefill:
            request = self._requests[chunk.request_id]
            tokens = torch.tensor([request.prompt_ids[chunk.start:chunk.start + chunk.length]])
            positions = torch.arange(chunk.start, chunk.start + chunk.length)[None]
            score_prompt = request.params.prompt_logprobs
            logits = self.model(tokens, positions, self.cache.view([request.slot], positions),
                                last_only=not score_prompt)
            if score_prompt:
                self._score_prompt(request, chunk.start, logits[0])
                logits = logits[:, -1:]
            if chunk.completes_prompt:
                parts.append(logits[:, -1])
                rows.append(chunk.request_id)
        return rows, (None if not parts else parts[0] if len(parts) == 1 else torch.cat(parts))

    @staticmethod
    def _score_prompt(request: _Request, start: int, logits: torch.Tensor) -> None:
        """Log-probabilities of prompt tokens start+1.. from the logits of positions start.. ."""
        if request.prompt_logprobs is None:
            request.prompt_logprobs = [None]  # nothing predicts the first token
        following = request.prompt_ids[start + 1:start + 1 + logits.shape[0]]
        if following:
            request.prompt_logprobs += token_logprobs(logits[:len(following)], torch.tensor(following),
                                                      request.params.logprobs or 0)

    def _banned(self, request: _Request) -> tuple[int, ...]:
        if len(request.output_ids) < request.params.min_tokens:
            return tuple(self.eos_token_ids | set(request.params.stop_token_ids))
        return ()

    def _append(self, request: _Request, token: int, now: float,
                logprob: TokenLogprob | None = None) -> RequestOutput:
        params = request.params
        request.output_ids.append(token)
        if logprob is not None:
            if request.logprobs is None:
                request.logprobs = []
            request.logprobs.append(logprob)
        if request.first_token_time is None:
            request.first_token_time = now
        stop_token = token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos)
        if stop_token:
            request.finish_reason = "stop"
        else:
            request.text += request.detokenizer.add(token)
            if self._apply_stop_strings(request):
                request.finish_reason = "stop"
        if request.finish_reason is None:
            total = len(request.prompt_ids) + len(request.output_ids)
            if len(request.output_ids) >= params.max_tokens or total >= self.max_seq_len:
                request.text += request.detokenizer.flush()
                self._apply_stop_strings(request)
                request.finish_reason = "stop" if request.stop_string_hit else "length"
        finished = request.finish_reason is not None
        delta = self._take_text(request, finished)
        completion = None
        if finished:
            request.finish_time = now
            self.scheduler.finish(request.request_id)
            self._release(request)
            del self._requests[request.request_id]
            completion = self._completion(request)
        return RequestOutput(request.request_id, [token], delta, finished, request.finish_reason, completion,
                             [logprob] if logprob is not None else None)

    def _apply_stop_strings(self, request: _Request) -> bool:
        """Cut the text before the first stop string; True when one was found."""
        stops = request.params.stop
        if not stops:
            return False
        window_start = max(0, request.emitted - max(len(s) for s in stops))
        hits = [i for i in (request.text.find(s, window_start) for s in stops) if i >= 0]
        if not hits:
            return False
        request.text = request.text[: min(hits)]
        request.stop_string_hit = True
        return True

    def _take_text(self, request: _Request, finished: bool) -> str:
        """New text to hand out; while running, hold back what could still become a stop string."""
        end = len(request.text)
        if not finished and request.params.stop:
            end = max(request.emitted, end - (max(len(s) for s in request.params.stop) - 1))
        delta = request.text[request.emitted:end]
        request.emitted = end
        return delta

    def _release(self, request: _Request) -> None:
        if request.slot is not None:
            self.cache.free(request.slot)
            request.slot = None
        self.sampler.forget(request.request_id)

    # --- loops over step() ------------------------------------------------------------------
    @staticmethod
    def _completion(r: _Request) -> Completion:
        ttft = r.first_token_time - r.arrival
        elapsed = r.finish_time - r.arrival
        decode_steps = len(r.output_ids) - 1
        tpot = (r.finish_time - r.first_token_time) / decode_steps if decode_steps > 0 else 0.0
        return Completion(r.request_id, r.prompt_ids, list(r.output_ids), r.text, r.finish_reason, ttft, tpot, elapsed,
                          r.logprobs, r.prompt_logprobs)

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 use_cache: bool = True) -> list[Completion]:
        """Run a batch of prompts to completion (all at once, up to max_batch in flight)."""
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise RequestError("give one SamplingParams per prompt, or one for all")
        if not use_cache:
            return [self._generate_without_cache(p, sp) for p, sp in zip(prompts, params_list)]
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list)]
        done: dict[str, Completion] = {}
        while len(done) < len(ids):
            for out in self.step():
                if out.completion is not None:
                    done[out.request_id] = out.completion
        return [done[i] for i in ids]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield this request's outputs step by step; the last one carries the Completion."""
        request_id = self.add_request(prompt, params)
        try:
            while True:
                for out in self.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.abort(request_id)  # no-op when it finished

    @torch.inference_mode()
    def _generate_without_cache(self, prompt: str | list[int], params: SamplingParams) -> Completion:
        """Recompute the whole sequence for every token (the seed's experiment 1 baseline)."""
        ids = self.encode_prompt(prompt)
        self.check_fits(len(ids), params)
        request_id = f"nocache-{next(self._ids)}"
        request = _Request(request_id, ids, params, self.tokenizer.detokenizer(ids), time.perf_counter())
        self._requests[request_id] = request
        while request.finish_reason is None:
            sequence = torch.tensor([request.history])
            logits = self.model(sequence, torch.arange(sequence.shape[1])[None], None, last_only=True)[:, -1]
            token = self.sampler(logits, [params], [request_id], [request.history], [len(ids)],
                                 [self._banned(request)])
            output = self._append(request, int(token[0]), time.perf_counter())
        return output.completion
