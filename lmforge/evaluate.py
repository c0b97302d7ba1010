"""Quality of a model on a text: sliding-window perplexity, and against a reference model the
mean KL divergence of next-token distributions and top-1 agreement."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.progress import progress_iter


@dataclass
class EvalResult:
    perplexity: float
    tokens_scored: int
    mean_nll: float
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    reference_perplexity: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


def check_window_args(ctx: int, stride: int) -> None:
    """Raise on window settings `windows` cannot use (before any model is loaded)."""
    if ctx < 2 or not 0 < stride <= ctx:
        raise LmforgeError(f"need ctx >= 2 and 0 < stride <= ctx (got ctx={ctx}, stride={stride})")


def windows(num_tokens: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window, each with up to `ctx` tokens of context, windows moving
    `stride` tokens at a time. With stride < ctx every position 1..n-1 is scored exactly once; with
    stride == ctx (non-overlapping windows, the protocol of llama.cpp and transformers' guide) each
    window's first token has no context and is not scored."""
    check_window_args(ctx, stride)
    if num_tokens < 2:
        raise LmforgeError("the text has fewer than two tokens: nothing to score")
    out, prev_end = [], 1
    for begin in range(0, num_tokens, stride):
        end = min(begin + ctx, num_tokens)
        first = max(prev_end, begin + 1)
        if end > first:
            out.append((begin, end, first))
            prev_end = end
        if end == num_tokens:
            break
    return out


@torch.inference_mode()
def _window_log_probs(model, ids: torch.Tensor, begin: int, end: int, first: int) -> torch.Tensor:
    """Log-probabilities [end - first, V] of the tokens at positions first..end-1."""
    window = ids[begin:end][None]
    logits = model(window, torch.arange(end - begin)[None])[0]
    return logits[first - 1 - begin: end - 1 - begin].float().log_softmax(-1)


def evaluate(model, token_ids: list[int], ctx: int = 512, stride: int = 256, reference=None,
             show_progress: bool = True) -> EvalResult:
    ids = torch.tensor(token_ids)
    spans = windows(len(ids), min(ctx, model.config.max_position_embeddings), stride)
    nll = ref_nll = kl = agree = 0.0
    scored = 0
    iterator = progress_iter(spans, "Scoring") if show_progress else spans
    for begin, end, first in iterator:
        targets = ids[first:end]
        logp = _window_log_probs(model, ids, begin, end, first)
        nll -= logp.gather(-1, targets[:, None]).sum().item()
        if reference is not None:
            ref_logp = _window_log_probs(reference, ids, begin, end, first)
            ref_nll -= ref_logp.gather(-1, targets[:, None]).sum().item()
            kl += (ref_logp.exp() * (ref_logp - logp)).sum().item()
            agree += (ref_logp.argmax(-1) == logp.argmax(-1)).sum().item()
        scored += len(targets)
    result = EvalResult(math.exp(nll / scored), scored, nll / scored)
    if reference is not None:
        result.kl_divergence = kl / scored
        result.top1_agreement = agree / scored
        result.reference_perplexity = math.exp(ref_nll / scored)
    return result
