"""Model architecture as one frozen record, read from a Hugging Face config or GGUF metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ModelError
from lmforge.models.registry import ARCHITECTURES


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ModelError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"num_heads ({self.num_heads}) is not a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def is_runnable(self) -> bool:
        """Whether the model code runs it (any config can still be planned)."""
        return self.architecture in ARCHITECTURES

    # --- sizes -------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters by component, computed from the architecture alone."""
        h, q_dim, kv_dim = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q_dim + 2 * h * kv_dim + q_dim * h
        if self.attention_bias:
            attention += q_dim + 2 * kv_dim
        mlp = 3 * h * self.intermediate_size
        counts = {
            "embedding": self.vocab_size * h,
            "attention": self.num_layers * attention,
            "mlp": self.num_layers * mlp,
            "norms": (2 * self.num_layers + 1) * h,
            "lm_head": 0 if self.tie_word_embeddings else self.vocab_size * h,
        }
        return counts

    @property
    def num_parameters(self) -> int:
        return sum(self.parameter_counts().values())

    def kv_cache_bytes_per_token(self, bytes_per_element: float = 2) -> float:
        """K and V for every layer: 2 * layers * kv_heads * head_dim * bytes (GQA/MQA aware)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    # --- readers ------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Read a Hugging Face config.json dictionary (transformers 4 and 5 spellings)."""
        if "text_config" in d and "hidden_size" not in d:
            d = {**d["text_config"], "model_type": d["text_config"].get("model_type", d.get("model_type"))}
        try:
            arch = str(d.get("model_type") or "").lower()
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            kv_heads = int(d.get("num_key_value_heads") or heads)
            head_dim = int(d.get("head_dim") or hidden // heads)
            rope_params = dict(d.get("rope_parameters") or {})
            rope_scaling = d.get("rope_scaling") or None
            rope_theta = float(d.get("rope_theta") or rope_params.get("rope_theta") or 10000.0)
            if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
            if rope_scaling is not None:
                rope_scaling = {k: v for k, v in rope_scaling.items() if k != "rope_theta"}
                rope_scaling.setdefault("rope_type", rope_scaling.get("type", "default"))
                if rope_scaling["rope_type"] == "default":
                    rope_scaling = None
            eos = d.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
            sliding = d.get("sliding_window") if d.get("use_sliding_window", True) else None
            return cls(
                architecture=arch,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                max_position_embeddings=int(d.get("max_position_embeddings") or 2048),
                rms_norm_eps=float(d.get("rms_norm_eps") or 1e-6),
                rope_theta=rope_theta,
                rope_scaling=tuple(sorted(rope_scaling.items())) if rope_scaling else None,
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=bool(d.get("attention_bias", arch in ARCHITECTURES and ARCHITECTURES[arch].attention_bias)),
                sliding_window=int(sliding) if sliding else None,
                bos_token_id=d.get("bos_token_id"),
                eos_token_ids=tuple(int(e) for e in eos_ids),
            )
        except KeyError as e:
            raise ModelError(f"{source}: missing field {e.args[0]!r} (not a decoder-only transformer config?)") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"{source}: malformed config: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{path}: no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(data, source=str(path))

    def to_hf_dict(self) -> dict:
        """A config.json that transformers reads back as the same architecture."""
        d = {
            "model_type": self.architecture,
            "architectures": [ARCHITECTURES[self.architecture].hf_class if self.is_runnable else ""],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        }
        if self.sliding_window:
            d["sliding_window"] = self.sliding_window
            d["use_sliding_window"] = True
        return d
