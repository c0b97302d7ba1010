"""The architectures lmforge runs, and what differs between them outside the config.

All of them are built by `transformer.Transformer.from_hf_tensors` (a Llama-family decoder):
what varies between them (q/k/v biases, a sliding window, rope scaling) comes from the config.
An architecture whose block differs would get a builder of its own here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    name: str
    """`model_type` in a Hugging Face config, `general.architecture` in GGUF metadata."""
    hf_class: str
    """The transformers class a config.json names (`architectures`)."""
    attention_bias: bool = False
    """Whether q/k/v carry biases when the config does not say."""
    gguf_interleaved_qk: bool = False
    """llama.cpp stores Q/K rows with the rotary halves interleaved (undone on reading)."""


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", "LlamaForCausalLM", gguf_interleaved_qk=True),
    Architecture("mistral", "MistralForCausalLM"),
    Architecture("qwen2", "Qwen2ForCausalLM", attention_bias=True),
)}


def architecture(name: str, where: str = "") -> Architecture:
    """The registered architecture `name`, or a ModelError naming what lmforge runs."""
    found = ARCHITECTURES.get(name)
    if found is None:
        raise ModelError(f"{where + ': ' if where else ''}unsupported architecture '{name}'; lmforge runs "
                         f"{', '.join(ARCHITECTURES)}")
    return found
