"""A Llama-family decoder in plain PyTorch: forward(tokens, positions, cache) -> logits.

Covers llama (incl. llama3 rope scaling), mistral (sliding window) and qwen2 (q/k/v biases).
The model owns no cache: the caller passes a `CacheView` (or None to attend within the input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import ModelError
from lmforge.models.layers import DenseLinear, RMSNorm, dense_layer, pack_linears, tracing
from lmforge.models.weights import EMBEDDING, FINAL_NORM, WeightMap
from lmforge.native import one_query_attention


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling_dict
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_context = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return torch.where(medium, smoothed, scaled)
    raise ModelError(f"rope scaling type '{kind}' is not supported (supported: linear, llama3)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half as a roll and the sign folded into sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


@dataclass(frozen=True)
class KeyRanges:
    """In place of a mask for one-query steps: row b attends cached positions first[b]..last[b]."""

    first: torch.Tensor
    last: torch.Tensor


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.wqkv = DenseLinear(config.hidden_size, q_dim + 2 * kv_dim, bias=config.attention_bias)
        self.wo = DenseLinear(q_dim, config.hidden_size)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        batch, length, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.wqkv(x).view(batch, length, heads + 2 * kv_heads, self.head_dim).transpose(1, 2)
        # Rotate q and k together: one set of kernels instead of two.
        qk = apply_rope(qkv[:, : heads + kv_heads], cos, sin)
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads:]
        if cache is not None:
            k, v = cache.update_and_fetch(self.layer, k, v)
        if isinstance(mask, KeyRanges):  # the model checked that the native kernel takes these
            out = one_query_attention().attend_unchecked(q.reshape(batch, heads, self.head_dim), k, v,
                                                         mask.first, mask.last, self.head_dim ** -0.5)
            return self.wo(out.view(batch, 1, -1))
        dtype = q.dtype
        # CPU attention kernels are several times faster in float32 than in bfloat16.
        q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             enable_gqa=kv_heads != heads)
        return self.wo(out.to(dtype).transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hidden = config.intermediate_size
        self.w13 = DenseLinear(config.hidden_size, 2 * config.intermediate_size)  # gate | up
        self.w2 = DenseLinear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, is_causal, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.is_runnable:
            raise ModelError(f"architecture '{config.architecture}' cannot be run")
        self.config = config
        # With tied embeddings the table lives only in `output`; see `embed_tokens`.
        self.embed = None if config.tie_word_embeddings else nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.output = DenseLinear(config.hidden_size, config.vocab_size)
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        self.weight_dtype = torch.float32

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model's float weights were loaded in (its precision)."""
        return self.weight_dtype

    @property
    def activation_dtype(self) -> torch.dtype:
        """The dtype of the residual stream, norms and attention (the norms' weights)."""
        return self.norm.weight.dtype

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            return self.embed(tokens).to(self.activation_dtype)
        return self.output.embedding(tokens, self.activation_dtype)

    def attention_mask(self, positions, cache):
        """Boolean [B, 1, T, S] mask, or (None, is_causal) when SDPA needs none, or KeyRanges
        when each row has one new token and the native one-query kernel can attend for it."""
        batch, length = positions.shape
        window = self.config.sliding_window
        if length == 1 and cache is not None and self._native_attention_fits(cache):
            last = positions[:, 0].contiguous()
            first = (last - window + 1).clamp_min(0) if window is not None else torch.zeros_like(last)
            return KeyRanges(first, last), False
        if cache is not None and batch == 1 and length == 1 and (window is None or cache.key_length <= window):
            return None, False  # one decoding sequence: it sees its whole cache (no tensor work)
        if cache is None:
            key_positions = positions
        else:
            key_positions = torch.arange(cache.key_length).expand(batch, -1)
        starts_at_zero = bool((positions[:, 0] == 0).all())
        contiguous = length == 1 or bool((positions[:, 1:] - positions[:, :-1] == 1).all())
        short = window is None or key_positions.shape[1] <= window
        if short and contiguous and cache is None and starts_at_zero:
            return None, length > 1
        if short and cache is not None and batch == 1 and starts_at_zero and contiguous:
            return None, length > 1
        query = positions[:, None, :, None]
        keys = key_positions[:, None, None, :]
        mask = keys <= query
        if window is not None:
            mask &= keys > query - window
        return mask, False

    def _native_attention_fits(self, cache) -> bool:
        """Whether one_query_attention takes this model's q (float32) and the cache's k/v as
        `update_and_fetch` returns them (its dtype; an int8 cache dequantized to q's)."""
        if tracing() or self.activation_dtype != torch.float32 or self.norm.weight.requires_grad:
            return False
        kernel = one_query_attention()
        if kernel is None:
            return False
        c = self.config
        return kernel.supports_heads(c.num_heads, c.num_kv_heads, c.head_dim, cache.stored_dtype)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [B, 1, T, head_dim] for `positions` [B, T]."""
        angles = positions[..., None].float() * self.inv_freq
        cos, sin = angles.cos(), angles.sin()
        return (torch.cat((cos, cos), dim=-1).to(dtype)[:, None],
                torch.cat((-sin, sin), dim=-1).to(dtype)[:, None])

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache=None,
                last_only: bool = False) -> torch.Tensor:
        """tokens, positions: [B, T] int64. Returns logits [B, T, vocab] (or [B, 1, vocab])."""
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(positions, x.dtype)
        mask, is_causal = self.attention_mask(positions, cache)
        for block in self.layers:
            x = block(x, cos, sin, mask, is_causal, cache)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x))

    # --- weights -----------------------------------------------------------------------------
    @classmethod
    def from_hf_tensors(cls, config: ModelConfig, tensors: dict[str, torch.Tensor],
                        dtype: torch.dtype = torch.float32, linear_factory=None,
                        activation_dtype: torch.dtype = torch.float32) -> "Transformer":
        """Build the model from tensors with Hugging Face names (q/k/v and gate/up are fused,
        as `models.weights.WeightMap` says).

        `linear_factory(fused)` builds the layer for a `FusedLinear` (a quantized checkpoint
        passes its own); the default reads dense `.weight`s.
        Weights are kept in `dtype`; everything between the products runs in `activation_dtype`:
        float32 by default, because CPUs without bfloat16 arithmetic run the many small norm,
        rotation and attention kernels of a bfloat16 model faster and more exactly in float32."""
        with torch.device("meta"):
            model = cls(config)
        weights = WeightMap(config)

        def norm_weight(name):
            return nn.Parameter(tensors[name].to(activation_dtype), requires_grad=False)

        make = linear_factory or (lambda fused: dense_layer(tensors, fused, dtype))
        if model.embed is not None:
            model.embed = nn.Embedding.from_pretrained(tensors[EMBEDDING + ".weight"].to(dtype), freeze=True)
        model.output = make(weights.head(tensors))
        model.norm.weight = norm_weight(FINAL_NORM)
        for i, block in enumerate(model.layers):
            for attr, name in weights.block_norms(i).items():
                getattr(block, attr).weight = norm_weight(name)
            for path, fused in weights.block_linears(i).items():
                parent, attr = path.split(".")
                setattr(getattr(block, parent), attr, make(fused))
        model.inv_freq = rope_inverse_frequencies(config)
        model.weight_dtype = dtype
        pack_linears(model.layers)  # not the output layer: it may be the embedding table
        return model.eval().requires_grad_(False)
