"""Model parity with transformers: the truth for the model code."""

import pytest
import torch
import transformers

from conftest import save_tiny_model
from lmforge.kv_cache import KVCache
from lmforge.loading import load_checkpoint
from lmforge.models.transformer import Transformer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "In 1492, Columbus",
           "Large language models are deployed on small chips because"]

TINY_CASES = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("mistral", {"sliding_window": 8}),
    ("qwen2", {}),
]


@pytest.mark.parametrize("architecture,overrides", TINY_CASES,
                         ids=[f"{a}-{next(iter(o), 'plain')}" for a, o in TINY_CASES])
def test_tiny_random_models_match_transformers(tmp_path, architecture, overrides):
    save_tiny_model(tmp_path, architecture, **overrides)
    checkpoint = load_checkpoint(tmp_path)
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, torch.arange(24).expand(3, 24))
        theirs = reference(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("architecture,overrides", [("mistral", {"sliding_window": 8}), ("qwen2", {})])
def test_cached_decoding_matches_full_forward(tmp_path, architecture, overrides):
    """Prefill + one-token steps through the slot cache give the logits of one full pass."""
    save_tiny_model(tmp_path, architecture, **overrides)
    checkpoint = load_checkpoint(tmp_path)
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = KVCache(checkpoint.config, num_slots=3, max_seq_len=32)
    with torch.no_grad():
        full = model(tokens, torch.arange(20)[None])
        positions = torch.arange(12)[None]
        steps = [model(tokens[:, :12], positions, cache.view([2], positions))]
        for i in range(12, 20):
            pos = torch.tensor([[i]])
            steps.append(model(tokens[:, i:i + 1], pos, cache.view([2], pos)))
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4


@pytest.mark.parametrize("cache_dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_batched_one_token_steps_at_different_lengths_match_full_forwards(tmp_path, cache_dtype, tolerance):
    """Three sequences decoded together at different positions (a window of 8 in play): each
    step's logits equal those of the sequence's own full forward. Where the native one-query
    kernel exists these steps go through it (KeyRanges in place of a mask)."""
    from lmforge.models.transformer import KeyRanges
    from lmforge.native import one_query_attention

    save_tiny_model(tmp_path, "mistral", sliding_window=8)
    checkpoint = load_checkpoint(tmp_path)
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(6))
    prompt_lengths = [5, 14, 9]
    cache = KVCache(checkpoint.config, num_slots=4, max_seq_len=32, dtype=cache_dtype)
    slots = [3, 0, 2]  # not consecutive: the cache gathers them
    with torch.no_grad():
        for slot, row, n in zip(slots, range(3), prompt_lengths):
            positions = torch.arange(n)[None]
            model(tokens[row:row + 1, :n], positions, cache.view([slot], positions))
        for step in range(6):
            positions = torch.tensor([[n + step] for n in prompt_lengths])
            view = cache.view(slots, positions)
            mask, _ = model.attention_mask(positions, view)
            assert isinstance(mask, KeyRanges) == (one_query_attention() is not None)
            logits = model(tokens[torch.arange(3)[:, None], positions], positions, view)
            for row, n in enumerate(prompt_lengths):
                end = n + step + 1
                full = model(tokens[row:row + 1, :end], torch.arange(end)[None])[0, -1]
                assert (logits[row, 0] - full).abs().max() < tolerance


def test_embedded_model_logits_match_transformers(embedded, reference_model):
    tok = embedded.tokenizer
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            ours = embedded.model(ids, torch.arange(ids.shape[1])[None])
            theirs = reference_model(ids).logits
        assert (ours - theirs).abs().max().item() < 5e-3, prompt


def test_embedded_model_greedy_continuations_match_transformers(embedded, reference_model):
    """32 greedy tokens, one prompt at a time and all prompts in one batch."""
    from lmforge.sampling import SamplingParams

    tok = embedded.tokenizer
    params = SamplingParams(temperature=0, max_tokens=32, min_tokens=32)  # as min_new_tokens
    engine = embedded.engine(max_batch=len(PROMPTS), max_seq_len=128)
    batched = engine.generate(PROMPTS, params)
    for prompt, completion in zip(PROMPTS, batched):
        ids = torch.tensor([tok.encode(prompt)])
        expected = reference_model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        expected = expected[0, ids.shape[1]:].tolist()
        alone = engine.generate([prompt], params)[0]
        assert alone.token_ids == expected, prompt
        assert completion.token_ids == expected, prompt


def test_bfloat16_model_agrees_with_float32(embedded):
    import lmforge

    bf16 = lmforge.load("smollm2-135m", "bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    # bfloat16 weights; norms, residual stream and logits in float32 (see from_hf_tensors)
    assert bf16.model.layers[0].feed_forward.w2.weight.dtype == torch.bfloat16
    assert bf16.model.activation_dtype == torch.float32
    assert bf16.engine(max_batch=1, max_seq_len=16).cache.dtype == torch.bfloat16
    ids = torch.tensor([embedded.tokenizer.encode(" ".join(PROMPTS))])
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        a = embedded.model(ids, positions)[0]
        b = bf16.model(ids, positions)[0].float()
    agreement = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agreement > 0.85
    assert torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True,
                                      reduction="batchmean") < 0.1


def test_dense_linear_layouts_compute_the_same_product():
    """plain (bf16), transposed and oneDNN-packed float32 all give x W^T + b; weights round-trip."""
    from lmforge.cpu_kernels import onednn_packing_works
    from lmforge.models.layers import DenseLinear

    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(48, 40, generator=gen), torch.randn(48, generator=gen)
    x = torch.randn(2, 5, 40, generator=gen)
    expected = torch.nn.functional.linear(x, weight, bias)

    transposed = DenseLinear.from_weight(weight.clone(), bias)
    assert transposed.layout == "transposed"
    packed = DenseLinear.from_weight(weight.clone(), bias)
    assert packed.pack_() == onednn_packing_works()
    for layer in (transposed, packed):
        assert (layer(x) - expected).abs().max() < 1e-4
        assert torch.equal(layer.dense_weight(), weight)
    plain = DenseLinear.from_weight(weight.bfloat16(), bias.bfloat16())
    assert plain.layout == "plain" and not plain.pack_()
    assert (plain(x.bfloat16()).float() - expected).abs().max() < 0.5

    doubled = weight * 2
    packed.replace_weight(doubled)  # stays in its layout
    assert (packed(x) - torch.nn.functional.linear(x, doubled, bias)).abs().max() < 1e-4


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_half_weights_multiply_float32_inputs_by_the_kernel_this_cpu_favours(rows):
    """Few rows: lmforge's native kernel where it is faster here, else the input cast to bfloat16
    for PyTorch's kernel; many rows, where that kernel is emulated (half_products_are_slow),
    the weight is converted to float32 instead."""
    from lmforge.cpu_kernels import HALF_PRODUCT_MIN_ROWS_TO_CONVERT, fast_half_linear, half_products_are_slow
    from lmforge.models.layers import DenseLinear

    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(96, 64, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    layer = DenseLinear.from_weight(weight, bias)
    x = torch.randn(rows, 64, generator=gen)
    y = layer(x)
    assert y.dtype == torch.float32
    few = rows < HALF_PRODUCT_MIN_ROWS_TO_CONVERT
    native = fast_half_linear(torch.bfloat16)
    if few and native is not None:
        expected = native.linear(x, weight, bias)
    elif not few and half_products_are_slow(torch.bfloat16):
        expected = torch.nn.functional.linear(x, weight.float(), bias.float())
    else:
        expected = torch.nn.functional.linear(x.bfloat16(), weight, bias).float()
    assert torch.equal(y, expected)
    assert (y - torch.nn.functional.linear(x, weight.float(), bias.float())).abs().max() < 0.5


def test_body_layers_are_packed_but_not_the_tied_output(tmp_path):
    from lmforge.cpu_kernels import onednn_packing_works

    save_tiny_model(tmp_path, "llama", tie_word_embeddings=True)
    checkpoint = load_checkpoint(tmp_path)
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    body = {layer.layout for block in model.layers for layer in
            (block.attention.wqkv, block.attention.wo, block.feed_forward.w13, block.feed_forward.w2)}
    assert body == ({"packed"} if onednn_packing_works() else {"transposed"})
    assert model.output.layout == "transposed"  # rows are read as the embedding table
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model.embed_tokens(tokens), checkpoint.tensors["model.embed_tokens.weight"][tokens])
