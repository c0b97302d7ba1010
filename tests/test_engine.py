"""The engine on the embedded model: batching, streaming, stops, limits, cache on/off."""

import pytest

from lmforge.errors import RequestError
from lmforge.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(embedded):
    return embedded.engine(max_batch=4, max_seq_len=256, prefill_chunk=16)


def test_batch_of_different_lengths_matches_each_prompt_alone(engine):
    prompts = ["Hi", "The three largest cities of Japan are Tokyo, Osaka and",
               "Water boils at", "Once upon a time, in a small village by the sea, there lived"]
    together = engine.generate(prompts, GREEDY)
    for prompt, completion in zip(prompts, together):
        assert engine.generate([prompt], GREEDY)[0].token_ids == completion.token_ids
    assert not engine.has_unfinished() and engine.cache.used_slots == 0


def test_more_prompts_than_slots_queue_and_finish(engine):
    prompts = [f"Count: {i}," for i in range(7)]
    completions = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert [c.completion_tokens for c in completions] == [5] * 7
    assert all(c.finish_reason == "length" for c in completions)


def test_without_cache_gives_the_same_tokens(engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    cached = engine.generate(["The capital of Germany is"], params)[0]
    uncached = engine.generate(["The capital of Germany is"], params, use_cache=False)[0]
    assert cached.token_ids == uncached.token_ids and cached.text == uncached.text


def test_stream_deltas_add_up_to_the_text(engine, embedded):
    outputs = list(engine.stream("List three colours:", GREEDY))
    assert outputs[-1].finished and all(not o.finished for o in outputs[:-1])
    text = "".join(o.delta_text for o in outputs)
    ids = [t for o in outputs for t in o.new_token_ids]
    assert text == embedded.tokenizer.decode(ids)
    assert len(ids) == 24


def test_stop_string_cuts_text_and_is_never_streamed(engine):
    full = engine.generate(["The capital of France is"], GREEDY)[0].text
    stop = full.strip().split()[2]  # a word from the middle of the greedy answer
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=(stop,))
    completion = engine.generate(["The capital of France is"], params)[0]
    assert completion.finish_reason == "stop"
    assert completion.text == full[: full.index(stop)]
    streamed = "".join(o.delta_text for o in engine.stream("The capital of France is", params))
    assert streamed == completion.text and stop not in streamed


def test_stop_token_ids_and_eos(engine, embedded):
    chat = embedded.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    answer = engine.generate([chat], SamplingParams(temperature=0, max_tokens=64))[0]
    assert answer.finish_reason == "stop"
    assert answer.token_ids[-1] in embedded.tokenizer.eos_token_ids
    assert "Paris" in answer.text
    # The same answer with EOS ignored runs to max_tokens; with min_tokens, EOS comes later.
    longer = engine.generate([chat], SamplingParams(temperature=0, max_tokens=64, ignore_eos=True))[0]
    assert longer.finish_reason == "length" and longer.completion_tokens == 64
    n = answer.completion_tokens
    delayed = engine.generate([chat], SamplingParams(temperature=0, max_tokens=64, min_tokens=n + 2))[0]
    assert all(t not in embedded.tokenizer.eos_token_ids for t in delayed.token_ids[: n + 2])
    first = answer.token_ids[1]
    stopped = engine.generate([chat], SamplingParams(temperature=0, max_tokens=64, stop_token_ids=(first,)))[0]
    assert stopped.token_ids == answer.token_ids[:2] and stopped.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=16, ignore_eos=True)
    a = engine.generate(["Tell me a story"], params)[0].token_ids
    b = engine.generate(["Tell me a story"], params)[0].token_ids
    c = engine.generate(["Tell me a story"], SamplingParams(temperature=1.0, top_p=0.9, seed=43,
                                                            max_tokens=16, ignore_eos=True))[0].token_ids
    assert a == b and a != c


def test_timings_are_reported(engine):
    c = engine.generate(["Hello"], GREEDY)[0]
    assert 0 < c.ttft_s <= c.elapsed_s and c.tpot_s > 0 and c.tokens_per_s > 0


def test_prompt_longer_than_context_is_refused(engine):
    with pytest.raises(RequestError, match="context window"):
        engine.generate(["word " * 400], GREEDY)
    with pytest.raises(RequestError, match="max_tokens"):
        engine.generate(["Hello"], SamplingParams(max_tokens=300))
    with pytest.raises(RequestError, match="empty"):
        engine.generate([""], GREEDY)


def test_abort_frees_the_slot(engine):
    stream = engine.stream("Write a long essay about rivers.", GREEDY)
    next(stream)
    assert engine.cache.used_slots == 1
    stream.close()
    assert engine.cache.used_slots == 0 and not engine.has_unfinished()


def test_logprobs_of_new_and_prompt_tokens_match_one_full_forward(embedded):
    """Chunked prefill (chunks of 5) and decoding report what one forward pass over everything says."""
    import torch

    from lmforge.engine import Engine

    engine = Engine(embedded.model, embedded.tokenizer, max_batch=2, max_seq_len=64, prefill_chunk=5)
    prompt = embedded.tokenizer.encode("The quick brown fox jumps over the lazy dog because")
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=True)
    streamed = [lp for out in engine.stream(prompt, params) for lp in out.logprobs]
    done = engine.generate([prompt], params)[0]
    sequence = prompt + done.token_ids
    with torch.no_grad():
        logits = embedded.model(torch.tensor([sequence]), torch.arange(len(sequence))[None])[0]
    expected = torch.log_softmax(logits, dim=-1)
    assert done.prompt_logprobs[0] is None and len(done.prompt_logprobs) == len(prompt)
    for i, lp in enumerate(done.prompt_logprobs[1:], start=1):
        assert lp.token_id == prompt[i] and abs(lp.logprob - expected[i - 1, prompt[i]].item()) < 1e-3
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    for j, lp in enumerate(done.logprobs):
        row = expected[len(prompt) - 1 + j]
        assert lp.token_id == done.token_ids[j] and abs(lp.logprob - row[lp.token_id].item()) < 1e-3
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely token
    assert [lp.token_id for lp in streamed] == done.token_ids
    assert engine.generate([prompt], SamplingParams(temperature=0, max_tokens=2))[0].logprobs is None
    with pytest.raises(RequestError, match="logprobs"):
        SamplingParams(logprobs=21)
