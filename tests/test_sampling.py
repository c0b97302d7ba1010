import math

import pytest
import torch

from lmforge.errors import RequestError
from lmforge.sampling import (BatchSampler, SamplingParams, apply_min_p, apply_presence_frequency,
                              apply_repetition_penalty, apply_top_k, apply_top_p, make_sampler, probabilities)

LOGITS = torch.tensor([[3.0, 2.0, 1.0, 0.5]])


def kept(logits):
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_temperature_probabilities_are_exact_softmax():
    for t in (0.1, 0.5, 1.0, 2.0):
        expected = [math.exp(x / t) for x in (3, 2, 1, 0.5)]
        expected = [e / sum(expected) for e in expected]
        got = probabilities(LOGITS[0], temperature=t).tolist()
        assert got == pytest.approx(expected, rel=1e-9)
    # The seed printed 0.876 for T=0.1; the exact value:
    assert probabilities(LOGITS[0], 0.1)[0] > 0.9999
    assert probabilities(LOGITS[0], 0).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_top_k_keeps_k_largest():
    assert kept(apply_top_k(LOGITS, torch.tensor([2]))) == [0, 1]
    assert kept(apply_top_k(LOGITS, torch.tensor([0]))) == [0, 1, 2, 3]


def test_top_p_keeps_smallest_nucleus():
    probs = LOGITS.softmax(-1)[0]  # 0.63, 0.23, 0.085, 0.052
    assert kept(apply_top_p(LOGITS, torch.tensor([0.5]))) == [0]
    assert kept(apply_top_p(LOGITS, torch.tensor([float(probs[0] + 0.01)]))) == [0, 1]
    assert kept(apply_top_p(LOGITS, torch.tensor([1.0]))) == [0, 1, 2, 3]


def test_min_p_drops_tokens_below_fraction_of_best():
    probs = LOGITS.softmax(-1)[0]
    ratio = float(probs[2] / probs[0])  # token 2 sits right at this fraction of the best
    assert kept(apply_min_p(LOGITS, torch.tensor([ratio * 1.01]))) == [0, 1]
    assert kept(apply_min_p(LOGITS, torch.tensor([ratio * 0.99]))) == [0, 1, 2]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_presence_and_frequency_penalties():
    logits = torch.zeros(1, 3)
    counts = torch.tensor([[0, 1, 3]])
    out = apply_presence_frequency(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    assert out.tolist() == [[0.0, -0.75, -1.25]]


def test_batch_rows_use_their_own_settings_and_seeds():
    sampler = BatchSampler()
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=7),
              SamplingParams(temperature=1.0, top_k=1, seed=3)]
    hist = [[1], [1], [1]]
    first = [sampler(logits, params, [f"a{i}" for i in range(3)], hist, [1, 1, 1]).tolist() for _ in range(5)]
    assert all(row[0] == int(logits[0].argmax()) for row in first)  # greedy row
    assert all(row[2] == int(logits[2].argmax()) for row in first)  # top-k 1 is greedy too
    again = [BatchSampler()(logits, params, ["b0", "b1", "b2"], hist, [1, 1, 1]).tolist()[1]]
    assert again[0] == first[0][1]  # same seed, same first draw
    assert len({row[1] for row in first}) > 1  # later draws move on


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    sample = make_sampler(SamplingParams(temperature=1.0, seed=0))
    draws = [sample(logits[0]) for _ in range(3000)]
    freq = [draws.count(i) / len(draws) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


def test_banned_tokens_are_never_chosen():
    logits = torch.tensor([[5.0, 1.0, 0.0]])
    token = BatchSampler()(logits, [SamplingParams(temperature=0)], ["x"], [[1]], [1], banned=[(0,)])
    assert token.tolist() == [1]


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 0), ("top_k", -2), ("min_p", 2),
                                         ("max_tokens", 0), ("repetition_penalty", 0),
                                         ("presence_penalty", 3), ("min_tokens", 999)])
def test_invalid_parameters_name_the_field(field, value):
    with pytest.raises(RequestError, match=field):
        SamplingParams(**{field: value})


def test_parse_settings_string():
    p = SamplingParams.parse("temperature=0.2, top_p=0.9,top_k=5,stop=END", SamplingParams(max_tokens=9))
    assert (p.temperature, p.top_p, p.top_k, p.stop, p.max_tokens) == (0.2, 0.9, 5, ("END",), 9)
    with pytest.raises(RequestError):
        SamplingParams.parse("temprature=1")
    with pytest.raises(RequestError):
        SamplingParams.parse("top_p=high")


def test_top_p_on_a_large_vocabulary_matches_a_full_sort():
    """The windowed nucleus equals the textbook one (sort everything) for peaked and flat rows."""
    def full_sort(logits, top_p):
        values, order = logits.sort(dim=-1, descending=True)
        probs = values.softmax(-1)
        drop = (probs.cumsum(-1) - probs >= top_p[:, None]) & (top_p[:, None] < 1)
        drop[:, 0] = False
        return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))

    generator = torch.Generator().manual_seed(0)
    for scale in (0.3, 2.0, 8.0):
        logits = (torch.randn(4, 49152, generator=generator, dtype=torch.float64) * scale)
        logits[1, :500] = float("-inf")  # as after top-k
        top_p = torch.tensor([0.5, 0.9, 0.99, 1.0], dtype=torch.float64)
        assert torch.equal(apply_top_p(logits, top_p).isinf(), full_sort(logits, top_p).isinf())
