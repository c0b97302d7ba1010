"""Saved quantized models: compressed-tensors layout, and identical outputs after reloading."""

import json

import pytest
import torch

from conftest import save_tiny_model
from lmforge.errors import LmforgeError, ModelError
from lmforge.loading import load_checkpoint
from lmforge.models.transformer import Transformer
from lmforge.quant.apply import quantize_model, quantized_layer_factory
from lmforge.quant.recipe import QuantRecipe
from lmforge.quant.rtn import QuantSpec, quantize
from lmforge.quant.serialize import pack_int32, quantized_tensors, read_quantized, save_quantized, unpack_int32


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits):
    levels = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (12, 37), dtype=torch.int8)
    words = pack_int32(levels, bits)
    assert words.dtype == torch.int32 and words.shape == (12, -(-37 // (32 // bits)))
    assert torch.equal(unpack_int32(words, bits, 37), levels)
    by_rows = pack_int32(levels, bits, dim=0)
    assert by_rows.shape == (-(-12 // (32 // bits)), 37)
    assert torch.equal(unpack_int32(by_rows, bits, 12, dim=0), levels)


def test_packing_puts_the_first_value_in_the_lowest_bits():
    levels = torch.tensor([[-8, -7, 0, 0, 0, 0, 0, 7]], dtype=torch.int8)  # offset by +8: 0, 1, 8, ..., 15
    word = int(pack_int32(levels, 4)[0, 0]) & 0xFFFFFFFF
    assert word == 0 | 1 << 4 | 8 << 8 | 8 << 12 | 8 << 16 | 8 << 20 | 8 << 24 | 15 << 28


@pytest.mark.parametrize("spec", [QuantSpec(4, True, "group", 32), QuantSpec(4, False, "group", 64),
                                  QuantSpec(8, True, "channel"), QuantSpec(8, False, "group", 32)], ids=str)
def test_tensor_round_trip(spec):
    w = torch.randn(24, 100) * 0.1
    qw = quantize(w, spec)
    back = read_quantized(quantized_tensors("layer", qw), "layer", spec)
    assert torch.equal(back.q, qw.q) and torch.equal(back.scale, qw.scale)
    assert torch.equal(back.dequantize(), qw.dequantize())


RECIPES = [QuantRecipe("rtn", 4, "group", 32, symmetric=False), QuantRecipe("rtn", 8),
           QuantRecipe("gptq", 4, "group", 32, desc_act=True), QuantRecipe("awq", 4, "group", 32),
           QuantRecipe("smoothquant"), QuantRecipe("llm-int8"), QuantRecipe("rtn", 8, head_bits=None),
           QuantRecipe("rtn", 4, "group", 32, head_bits=4)]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.method}-{r.bits}-{r.head_bits}")
def test_save_and_load_give_identical_logits(tmp_path, architecture, recipe):
    save_tiny_model(tmp_path / "float", architecture, tie_word_embeddings=architecture == "llama")
    checkpoint = load_checkpoint(tmp_path / "float")
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    calibration = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize_model(model, recipe, calibration, show_progress=False)
    out = save_quantized(model, checkpoint.config, recipe, report.weights, tmp_path / "float", tmp_path / "q")

    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    body = config["config_groups"]["group_0"]
    assert body["weights"]["num_bits"] == recipe.bits
    assert body["format"] == ("pack-quantized" if recipe.bits == 4 else "int-quantized")
    assert (body["input_activations"] is not None) == (recipe.method in ("smoothquant", "llm-int8"))
    assert config["lmforge"]["recipe"]["method"] == recipe.method

    loaded = load_checkpoint(out)
    assert loaded.quantization is not None
    assert loaded.quantization.recipe == recipe and loaded.quantization.body == recipe.weight_spec
    factory = quantized_layer_factory(loaded.config, loaded.tensors, loaded.quantization, model.dtype)
    again = Transformer.from_hf_tensors(loaded.config, loaded.tensors, model.dtype, factory,
                                         activation_dtype=model.activation_dtype)
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(20).expand(2, 20)
    with torch.no_grad():
        assert torch.equal(model(tokens, positions), again(tokens, positions))
    assert type(again.layers[0].attention.wqkv) is type(model.layers[0].attention.wqkv)


def test_saving_never_overwrites(tmp_path):
    save_tiny_model(tmp_path / "float", "llama")
    checkpoint = load_checkpoint(tmp_path / "float")
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    recipe = QuantRecipe("rtn", 8)
    report = quantize_model(model, recipe, show_progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not empty"):
        save_quantized(model, checkpoint.config, recipe, report.weights, tmp_path / "float", tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_corrupt_quantized_checkpoint_is_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    save_tiny_model(tmp_path / "float", "llama")
    checkpoint = load_checkpoint(tmp_path / "float")
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    recipe = QuantRecipe("rtn", 4, "group", 32)
    report = quantize_model(model, recipe, show_progress=False)
    out = save_quantized(model, checkpoint.config, recipe, report.weights, tmp_path / "float", tmp_path / "q")
    tensors = load_file(out / "model.safetensors")
    del tensors["model.layers.0.self_attn.k_proj.weight_scale"]
    save_file(tensors, out / "model.safetensors")
    loaded = load_checkpoint(out)
    factory = quantized_layer_factory(loaded.config, loaded.tensors, loaded.quantization, torch.bfloat16)
    with pytest.raises(ModelError, match="k_proj is missing"):
        Transformer.from_hf_tensors(loaded.config, loaded.tensors, torch.bfloat16, factory,
                                    activation_dtype=torch.bfloat16)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "bitsandbytes"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="bitsandbytes"):
        load_checkpoint(out)
    with pytest.raises(LmforgeError):
        QuantRecipe("rtn", 4, "group", 100)


def test_embedded_model_saves_and_reloads_identically(tmp_path, embedded):
    import lmforge
    from lmforge.quant.workflow import quantize_to_folder

    recipe = QuantRecipe("rtn", 4, "group", 128, symmetric=False, head_bits=4)
    lm, _, folder = quantize_to_folder("smollm2-135m", recipe, tmp_path / "int4", show_progress=False)
    again = lmforge.load(folder)
    assert again.model.dtype == torch.bfloat16 and again.name == "int4"
    ids = torch.tensor([embedded.tokenizer.encode("Quantized weights must survive a round trip to disk.")])
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        assert torch.equal(lm.model(ids, positions), again.model(ids, positions))
    assert again.tokenizer.encode("round trip") == embedded.tokenizer.encode("round trip")
    from lmforge.inspection import inspect_model

    described = inspect_model(folder).quantization
    assert described == "rtn: 4-bit asymmetric weights per group of 128, INT4 output layer"
