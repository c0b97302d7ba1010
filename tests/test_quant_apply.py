"""Whole-model quantization: every method on tiny random models and on the embedded model."""

import math

import pytest
import torch

import lmforge
from conftest import save_tiny_model
from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate
from lmforge.loading import load_checkpoint
from lmforge.models.layers import DenseLinear
from lmforge.models.transformer import Transformer
from lmforge.quant.apply import quantize_model
from lmforge.quant.calibration import calibration_batch, default_calibration_text
from lmforge.quant.linear import Int4Linear, Int8Linear, W8A8Linear
from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.workflow import quantize_loaded, weight_bytes

TINY_RECIPES = {
    "rtn-int8": (QuantRecipe("rtn", 8), Int8Linear),
    "rtn-int4-asym": (QuantRecipe("rtn", 4, "group", 32, symmetric=False), Int4Linear),
    "gptq-int4": (QuantRecipe("gptq", 4, "group", 32), Int4Linear),
    "gptq-int8-channel": (QuantRecipe("gptq", 8, "channel"), Int8Linear),
    "awq-int4": (QuantRecipe("awq", 4, "group", 32), Int4Linear),
    "smoothquant": (QuantRecipe("smoothquant"), W8A8Linear),
    "llm-int8": (QuantRecipe("llm-int8"), W8A8Linear),
}


def tiny(tmp_path, architecture="llama"):
    save_tiny_model(tmp_path, architecture, hidden_size=128, intermediate_size=256)
    checkpoint = load_checkpoint(tmp_path)
    return Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)


@pytest.mark.parametrize("name", list(TINY_RECIPES))
def test_each_method_swaps_in_integer_layers_and_stays_close(tmp_path, name):
    recipe, layer_type = TINY_RECIPES[name]
    reference = tiny(tmp_path)
    model = tiny(tmp_path)
    calibration = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, recipe, calibration, show_progress=False)
    block = model.layers[0]
    for layer in (block.attention.wqkv, block.attention.wo, block.feed_forward.w13, block.feed_forward.w2):
        assert isinstance(layer, layer_type)
    assert isinstance(model.output, Int8Linear)  # the head: INT8 per channel
    assert not any(isinstance(m, DenseLinear) for m in model.modules())
    assert len(report.layers) == 2 * 4 + 1 and all(layer.sqnr_db > 10 for layer in report.layers)
    if recipe.method in ("awq", "smoothquant"):
        assert any(layer.note for layer in report.layers)
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(40).expand(2, 40)
    with torch.no_grad():
        expected = reference(tokens, positions).log_softmax(-1)
        got = model(tokens, positions).float().log_softmax(-1)
    kl = (expected.exp() * (expected - got)).sum(-1).mean()
    assert kl < (0.02 if recipe.bits == 8 else 0.2)


def test_fused_layers_keep_biases_and_sliding_windows(tmp_path):
    reference = tiny(tmp_path / "q", "qwen2")
    model = tiny(tmp_path / "q", "qwen2")
    calibration = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_model(model, QuantRecipe("gptq", 8, "channel"), calibration, show_progress=False)
    assert model.layers[0].attention.wqkv.bias is not None
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = reference(tokens, torch.arange(16)[None])
        b = model(tokens, torch.arange(16)[None]).float()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_bad_recipes_and_inputs(tmp_path):
    for kwargs, message in [(dict(method="magic"), "unknown quantization method"), (dict(bits=9), "8 or 4"),
                            (dict(bits=4, granularity="group", group_size=100), "group-size"),
                            (dict(method="smoothquant", bits=4), "8 bits"),
                            (dict(method="awq", bits=4), "group-wise"), (dict(method="gptq", granularity="tensor"),
                                                                        "per tensor"),
                            (dict(damp=0), "damp"), (dict(alpha=2), "alpha")]:
        with pytest.raises(LmforgeError, match=message):
            QuantRecipe(**kwargs)
    model = tiny(tmp_path)
    with pytest.raises(LmforgeError, match="calibration"):
        quantize_model(model, QuantRecipe("gptq", 4, "group", 32), None, show_progress=False)
    quantize_model(model, QuantRecipe("rtn", 8), show_progress=False)
    with pytest.raises(LmforgeError, match="float32"):
        quantize_model(model, QuantRecipe("rtn", 8), show_progress=False)


# --- the embedded model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wikitext_ids(embedded, shared_data):
    text = (shared_data / "wikitext2_test.txt").read_text(encoding="utf-8")
    return embedded.tokenizer.encode(text, add_special_tokens=False)[:1280]


@pytest.fixture(scope="module")
def float_perplexity(embedded, wikitext_ids):
    return evaluate(embedded.model, wikitext_ids, 512, 256, show_progress=False).perplexity


@pytest.fixture(scope="module")
def small_calibration(embedded):
    return calibration_batch(embedded.tokenizer, default_calibration_text(), 24, 256)


def quantized_perplexity(recipe, calibration, ids) -> tuple[float, object]:
    lm = lmforge.load("smollm2-135m", "float32")
    quantize_model(lm.model, recipe, calibration, show_progress=False)
    return evaluate(lm.model, ids, 512, 256, show_progress=False).perplexity, lm


def test_embedded_int8_and_int4_memory_and_quality(embedded, wikitext_ids, float_perplexity):
    float_bytes = weight_bytes(embedded.model)
    ppl8, lm8 = quantized_perplexity(QuantRecipe("rtn", 8), None, wikitext_ids)
    assert weight_bytes(lm8.model) < 0.3 * float_bytes
    assert abs(ppl8 / float_perplexity - 1) < 0.01
    prompt = lm8.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    answer = lm8.engine(max_batch=1, max_seq_len=128).generate([prompt], lmforge.SamplingParams(
        temperature=0, max_tokens=16))[0].text
    assert "Paris" in answer
    ppl4, lm4 = quantized_perplexity(QuantRecipe("rtn", 4, "group", 128), None, wikitext_ids)
    assert weight_bytes(lm4.model) < 0.2 * float_bytes
    assert float_perplexity < ppl4 < 2 * float_perplexity


@pytest.fixture(scope="module")
def real_layer_inputs(embedded, small_calibration):
    """What layer 3's MLP projections receive on calibration text: (w13 inputs, w2 inputs)."""
    ffn = embedded.model.layers[3].feed_forward
    seen = {"w13": [], "w2": []}
    hooks = [ffn.w13.register_forward_pre_hook(lambda m, a: seen["w13"].append(a[0].reshape(-1, a[0].shape[-1]))),
             ffn.w2.register_forward_pre_hook(lambda m, a: seen["w2"].append(a[0].reshape(-1, a[0].shape[-1])))]
    with torch.no_grad():
        embedded.model(small_calibration, torch.arange(small_calibration.shape[1])[None])
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


@pytest.mark.parametrize("name", ["w13", "w2"])
def test_embedded_gptq_beats_rtn_on_real_layers(embedded, real_layer_inputs, name):
    from lmforge.quant.gptq import HessianAccumulator, gptq_quantize
    from lmforge.quant.rtn import QuantSpec, quantize

    weight = getattr(embedded.model.layers[3].feed_forward, name).dense_weight()
    x = real_layer_inputs[name]
    fit, held_out = x[::2], x[1::2]  # judge on inputs GPTQ did not see
    acc = HessianAccumulator(x.shape[1])
    acc.add(fit)
    spec = QuantSpec(4, True, "group", 128)
    reference = held_out @ weight.t()

    def error(qw):
        return (held_out @ qw.dequantize().t() - reference).pow(2).mean().item()

    assert error(gptq_quantize(weight, acc.hessian(), spec, desc_act=True)) < 0.8 * error(quantize(weight, spec))


def test_embedded_awq_search_on_a_real_layer(embedded, real_layer_inputs):
    from lmforge.quant.awq import search_scales
    from lmforge.quant.rtn import QuantSpec

    weight = embedded.model.layers[3].feed_forward.w2.dense_weight()
    x = real_layer_inputs["w2"]
    found = search_scales(weight, x[:2048], x.abs().mean(0), QuantSpec(4, True, "group", 128), grid=20)
    assert found.loss <= found.first_loss
    assert found.scales.shape == (weight.shape[1],) and (found.scales > 0).all()


def test_embedded_smoothquant_beats_unsmoothed_w8a8(wikitext_ids, small_calibration, float_perplexity):
    smooth, _ = quantized_perplexity(QuantRecipe("smoothquant"), small_calibration, wikitext_ids)
    plain, _ = quantized_perplexity(QuantRecipe("rtn", 8, "tensor", activations="tensor"), None, wikitext_ids)
    assert smooth < plain
    assert smooth < 1.05 * float_perplexity


def test_embedded_llm_int8_uses_its_outlier_path(embedded, wikitext_ids, float_perplexity):
    lm = lmforge.load("smollm2-135m", "float32")
    quantize_loaded(lm, QuantRecipe("llm-int8"), show_progress=False)
    seen = []
    layers = [m for m in lm.model.modules() if isinstance(m, W8A8Linear)]
    hooks = [layer.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.outlier_columns(args[0].reshape(-1, mod.in_features).float()).numel()))
        for layer in layers]
    ppl = evaluate(lm.model, wikitext_ids[:600], 512, 256, show_progress=False).perplexity
    for hook in hooks:
        hook.remove()
    assert sum(seen) > 0  # SmolLM2 has activations above 6.0: some columns took the float path
    assert math.isfinite(ppl)
