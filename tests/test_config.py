import pytest
import torch
import transformers

from conftest import save_tiny_model
from lmforge import catalogue
from lmforge.config import ModelConfig
from lmforge.errors import ModelError


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2"])
def test_parameter_count_matches_transformers(tmp_path, architecture):
    save_tiny_model(tmp_path, architecture)
    config = ModelConfig.from_json_file(tmp_path / "config.json")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert config.num_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama-2-7b", "qwen2-7b", "mistral-7b", "llama-3-8b", "tinyllama-1.1b"])
def test_catalogue_parameter_counts_match_transformers(name):
    config = catalogue.lookup(name)
    hf_config = transformers.AutoConfig.for_model(**config.to_hf_dict())
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert config.num_parameters == sum(p.numel() for p in model.parameters())


def test_kv_cache_per_token_is_gqa_aware():
    glm = catalogue.lookup("chatglm3-6b")
    seed_formula = 2 * glm.hidden_size * glm.num_layers * 2  # what the seed wrote, ignoring MQA groups
    assert glm.kv_cache_bytes_per_token(2) * 16 == seed_formula
    llama2 = catalogue.lookup("llama-2-7b")  # multi-head attention: both formulas agree
    assert llama2.kv_cache_bytes_per_token(2) == 2 * llama2.hidden_size * llama2.num_layers * 2


def test_chatglm3_is_plannable_but_not_runnable():
    glm = catalogue.lookup("chatglm3-6b")
    assert 6.1e9 < glm.num_parameters < 6.3e9 and not glm.is_runnable


def test_transformers_5_rope_parameters_spelling():
    d = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
             num_attention_heads=2, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8192})
    config = ModelConfig.from_hf_dict(d)
    assert config.rope_theta == 500000.0 and config.rope_scaling_dict["rope_type"] == "llama3"
    assert config.num_kv_heads == 2 and config.head_dim == 4


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="hidden_size"):
        ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 3})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelConfig.from_json_file(bad)
    with pytest.raises(ModelError, match="multiple"):
        ModelConfig("llama", 10, 8, 16, 1, 3, 2, 4, 32)
