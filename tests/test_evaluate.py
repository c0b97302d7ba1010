import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate, windows


def test_windows_score_every_token_once_with_bounded_context():
    for n, ctx, stride in [(10, 4, 2), (100, 32, 16), (33, 32, 31), (5, 8, 4), (64, 8, 7)]:
        spans = windows(n, ctx, stride)
        scored = [p for begin, end, first in spans for p in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= ctx and begin < first for begin, end, first in spans)
    for bad_stride in (5, 0, -1):
        with pytest.raises(LmforgeError):
            windows(10, 4, bad_stride)


def test_non_overlapping_windows_score_all_but_each_windows_first_token():
    """stride == ctx: llama.cpp's and transformers' protocol; no token scored twice or without context."""
    for n, ctx in [(10, 4), (64, 8), (65, 8), (3, 8)]:
        spans = windows(n, ctx, ctx)
        assert [begin for begin, _, _ in spans] == list(range(0, n - 1, ctx))[:len(spans)]
        scored = [p for begin, end, first in spans for p in range(first, end)]
        assert scored == [p for p in range(1, n) if p % ctx != 0]
        assert all(end - begin <= ctx and first == begin + 1 for begin, end, first in spans)
    with pytest.raises(LmforgeError):
        windows(1, 4, 2)


def transformers_perplexity(model, ids, ctx, stride):
    """The same windows scored with transformers' model: the reference figure."""
    nll, count = 0.0, 0
    for begin, end, first in windows(len(ids), ctx, stride):
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:end]])).logits[0]
        logp = logits[first - 1 - begin: end - 1 - begin].log_softmax(-1)
        targets = torch.tensor(ids[first:end])
        nll -= logp.gather(-1, targets[:, None]).sum().item()
        count += len(targets)
    return math.exp(nll / count), count


def test_perplexity_agrees_with_transformers(embedded, reference_model, shared_data):
    text = (shared_data / "wikitext2_test.txt").read_text(encoding="utf-8")[:8000]
    ids = embedded.tokenizer.encode(text, add_special_tokens=False)[:700]
    ours = evaluate(embedded.model, ids, ctx=256, stride=128, show_progress=False)
    theirs, count = transformers_perplexity(reference_model, ids, 256, 128)
    assert ours.tokens_scored == count == len(ids) - 1
    assert abs(ours.perplexity / theirs - 1) < 1e-3
    assert 5 < ours.perplexity < 100  # a real language model on real English


def test_reference_comparison(embedded, shared_data):
    import lmforge

    ids = embedded.tokenizer.encode((shared_data / "tinyshakespeare.txt").read_text()[:3000],
                                    add_special_tokens=False)[:300]
    same = evaluate(embedded.model, ids, ctx=128, stride=64, reference=embedded.model, show_progress=False)
    assert same.kl_divergence == pytest.approx(0, abs=1e-9) and same.top1_agreement == 1.0
    bf16 = lmforge.load("smollm2-135m", "bfloat16").model
    lossy = evaluate(bf16, ids, ctx=128, stride=64, reference=embedded.model, show_progress=False)
    assert 0 < lossy.kl_divergence < 0.1 and 0.8 < lossy.top1_agreement < 1.0
    assert lossy.reference_perplexity == pytest.approx(same.perplexity)
