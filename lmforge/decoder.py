"""The one interface the engine drives a model through; the PyTorch `Transformer` and ONNX
Runtime's `OnnxDecoder` both implement it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: this module stays free of torch at import
    import torch

    from lmforge.config import ModelConfig
    from lmforge.kv_cache import CacheView


@runtime_checkable
class Decoder(Protocol):
    config: ModelConfig
    """The architecture (vocabulary, layers, heads: what the KV cache is shaped by)."""

    @property
    def dtype(self) -> torch.dtype:
        """The weights' precision; a KV cache defaults to it."""

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: CacheView | None = None,
                 last_only: bool = False) -> torch.Tensor:
        """tokens, positions [B, T] int64 -> logits [B, T, vocab] ([B, 1, vocab] with last_only).
        With a cache view, the new keys and values go into its slots and attention sees the
        slots' earlier tokens; without one, attention stays within `tokens`."""
