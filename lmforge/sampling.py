"""Sampling parameters and pure logits processors/samplers over a batch.

Every function takes logits [B, V] and per-row parameters, so one decode step can serve
requests that asked for different settings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from lmforge.errors import RequestError

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model, with the most likely alternatives at its place."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, alternatives: int) -> list[TokenLogprob]:
    """logits [N, V] and the tokens [N] that followed: their log-probabilities under the raw model."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, tokens[:, None].long())[:, 0].tolist()
    if alternatives:
        values, ids = logprobs.topk(alternatives, dim=-1)
        top = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        top = [()] * len(chosen)
    return [TokenLogprob(int(t), lp, alt) for t, lp, alt in zip(tokens.tolist(), chosen, top)]


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability adds up to top_p (nucleus)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely token's probability."""
    repetition_penalty: float = 1.0
    """Divide positive (multiply negative) logits of tokens already in prompt or output."""
    presence_penalty: float = 0.0
    """Subtract from the logit of each token that occurs in the output so far."""
    frequency_penalty: float = 0.0
    """Subtract this times the count of each token in the output so far."""
    seed: int | None = None
    """Per-request random seed: the same seed gives the same tokens."""
    max_tokens: int = 256
    """Most new tokens to generate."""
    min_tokens: int = 0
    """End-of-sequence and stop tokens are suppressed until this many tokens are out."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the text is cut before them."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation (besides the model's end-of-sequence tokens)."""
    logprobs: int | None = None
    """Report each new token's log-probability and this many most likely alternatives (0-20)."""
    prompt_logprobs: bool = False
    """Also score the prompt's tokens (with `logprobs` alternatives each)."""

    def __post_init__(self):
        def bad(name, why):
            raise RequestError(f"invalid {name}={getattr(self, name)!r}: {why}", param=name)

        if not 0 <= self.temperature <= 100:
            bad("temperature", "must be between 0 and 100")
        if self.top_k < 0:
            bad("top_k", "must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not 0 < self.repetition_penalty <= 10:
            bad("repetition_penalty", "must be in (0, 10]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                bad(name, "must be in [-2, 2]")
        if self.max_tokens < 1:
            bad("max_tokens", "must be at least 1")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            bad("min_tokens", "must be between 0 and max_tokens")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if any(not s for s in self.stop):
            bad("stop", "stop strings must not be empty")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            bad("logprobs", f"must be between 0 and {MAX_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, spec: str, base: "SamplingParams | None" = None) -> "SamplingParams":
        """'temperature=0.7,top_p=0.9' -> SamplingParams (for side-by-side comparisons)."""
        values = dict(vars(base or cls()))
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in types:
                raise RequestError(f"cannot read {item!r}: expected name=value with a name from "
                                   f"{', '.join(cls.field_names())}")
            try:
                if key in ("stop",):
                    values[key] = (raw,)
                elif key == "stop_token_ids":
                    values[key] = tuple(int(x) for x in raw.split(";"))
                elif key in ("ignore_eos", "prompt_logprobs"):
                    values[key] = raw.strip().lower() in ("1", "true", "yes")
                elif key in ("top_k", "max_tokens", "min_tokens", "seed", "logprobs"):
                    values[key] = int(raw)
                else:
                    values[key] = float(raw)
            except ValueError:
                raise RequestError(f"cannot read {item!r}: {raw!r} is not a number") from None
        return cls(**values)


# --- logits processors (pure, batched) ---------------------------------------------------------

def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """seen: bool [B, V] of tokens in prompt or output; penalty [B]. Positive logits are divided,
    negative multiplied (the CTRL rule the seed describes)."""
    penalty = penalty[:, None].to(logits.dtype)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(logits, counts, presence, frequency):
    """counts: [B, V] occurrences in the output so far (OpenAI's definition)."""
    counts = counts.to(logits.dtype)
    return logits - presence[:, None] * (counts > 0) - frequency[:, None] * counts


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Rows with temperature 0 are left as they are (they are decoded greedily)."""
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return logits / t[:, None].to(logits.dtype)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """top_k [B] ints; 0 keeps every token. Ties at the k-th value are kept."""
    vocab = logits.shape[-1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    # topk of the largest k in the batch: a full sort of the vocabulary costs ~30x more.
    kth = logits.topk(int(k.max()), dim=-1).values.gather(-1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor, window: int = 1024) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to >= top_p.

    Looks at the `window` most likely tokens first (widening it until every row's nucleus ends
    inside), which is exact and avoids sorting the whole vocabulary."""
    vocab = logits.shape[-1]
    log_total = logits.logsumexp(dim=-1, keepdim=True)
    threshold = top_p[:, None].to(logits.dtype)
    filtered = threshold < 1  # rows with top_p >= 1 keep every token
    width = min(window, vocab)
    while True:
        if width == vocab:  # a flat distribution: a full sort is cheaper than a wide topk
            values, order = logits.sort(dim=-1, descending=True)
        else:
            values, order = logits.topk(width, dim=-1)
        probs = (values - log_total).exp()
        cumulative = probs.cumsum(dim=-1)
        if width == vocab or bool(((cumulative[:, -1:] >= threshold) | ~filtered).all()):
            break
        width = vocab if 2 * width > vocab // 4 else 2 * width
    drop_sorted = (cumulative - probs >= threshold) & filtered
    drop_sorted[:, 0] = False
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, ~drop_sorted) | ~filtered
    return logits.masked_fill(~keep, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None].to(probs.dtype)
    return logits.masked_fill(probs < threshold, float("-inf"))


def probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> torch.Tensor:
    """The distribution a request samples from, for one row of logits [V] (used to explain settings)."""
    row = logits.double()[None]
    if temperature == 0:
        out = torch.zeros_like(row)
        out[0, row.argmax()] = 1.0
        return out[0]
    row = apply_temperature(row, torch.tensor([temperature], dtype=torch.double))
    row = apply_top_k(row, torch.tensor([top_k]))
    row = apply_top_p(row, torch.tensor([top_p], dtype=torch.double))
    row = apply_min_p(row, torch.tensor([min_p], dtype=torch.double))
    return row.softmax(-1)[0]


class BatchSampler:
    """Chooses the next token for each row of a batch, each row with its own SamplingParams.

    Holds the per-row state that spans steps (random generators); everything else is derived
    from the arguments of `__call__`.
    """

    def __init__(self):
        self._generators: dict[object, torch.Generator] = {}

    def forget(self, key) -> None:
        self._generators.pop(key, None)

    def _generator(self, key, seed: int | None) -> torch.Generator:
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator()
            if seed is None:
                gen.seed()
            else:
                gen.manual_seed(seed)
            self._generators[key] = gen
        return gen

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], keys: list,
                 histories: list[list[int]], prompt_lengths: list[int],
                 banned: list[tuple[int, ...]] | None = None) -> torch.Tensor:
        """logits [B, V] (any float dtype); histories: prompt + output ids per row. Returns [B] ids."""
        logits = logits.float()
        batch, vocab = logits.shape
        if any(p.repetition_penalty != 1.0 for p in params):
            seen = torch.zeros(batch, vocab, dtype=torch.bool)
            for row, ids in enumerate(histories):
                seen[row, ids] = True
            penalty = torch.tensor([p.repetition_penalty for p in params])
            logits = apply_repetition_penalty(logits, seen, penalty)
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            counts = torch.zeros(batch, vocab)
            for row, (ids, start) in enumerate(zip(histories, prompt_lengths)):
                out = torch.tensor(ids[start:], dtype=torch.long)
                counts[row].index_add_(0, out, torch.ones(len(out)))
            logits = apply_presence_frequency(logits, counts,
                                              torch.tensor([p.presence_penalty for p in params]),
                                              torch.tensor([p.frequency_penalty for p in params]))
        if banned and any(banned):
            mask = torch.zeros(batch, vocab, dtype=torch.bool)
            for row, ids in enumerate(banned):
                mask[row, list(ids)] = True
            logits = logits.masked_fill(mask, float("-inf"))
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled:
            return tokens
        rows = torch.tensor(sampled)
        sub = logits[rows]
        sub_params = [params[i] for i in sampled]
        sub = apply_temperature(sub, torch.tensor([p.temperature for p in sub_params]))
        if any(p.top_k for p in sub_params):
            sub = apply_top_k(sub, torch.tensor([p.top_k for p in sub_params]))
        if any(p.top_p < 1 for p in sub_params):
            sub = apply_top_p(sub, torch.tensor([p.top_p for p in sub_params]))
        if any(p.min_p > 0 for p in sub_params):
            sub = apply_min_p(sub, torch.tensor([p.min_p for p in sub_params]))
        probs = sub.softmax(dim=-1)
        for j, i in enumerate(sampled):
            # Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p.
            noise = torch.empty(vocab).exponential_(generator=self._generator(keys[i], params[i].seed))
            tokens[i] = (probs[j] / noise).argmax()
        return tokens


def make_sampler(params: SamplingParams):
    """A `logits [V] -> token id` function for one sequence (history-free settings only)."""
    sampler = BatchSampler()

    def sample(logits: torch.Tensor, history: list[int] | None = None) -> int:
        history = history or []
        return int(sampler(logits[None], [params], [0], [history], [len(history)])[0])

    return sample
