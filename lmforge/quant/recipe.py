"""What quantization does, as plain records: a weight format (QuantSpec), a run's method and
settings (QuantRecipe), and how a saved checkpoint is quantized (Quantization)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lmforge.errors import LmforgeError

PER_TENSOR = "tensor"
PER_CHANNEL = "channel"
PER_GROUP = "group"


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True
    granularity: str = PER_CHANNEL
    group_size: int = 128

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 8):
            raise LmforgeError(f"bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.granularity not in (PER_TENSOR, PER_CHANNEL, PER_GROUP):
            raise LmforgeError(f"granularity must be tensor, channel or group, got {self.granularity!r}")
        if self.granularity == PER_GROUP and self.group_size < 1:
            raise LmforgeError("group_size must be positive")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    def group_width(self, cols: int) -> int:
        return min(self.group_size, cols) if self.granularity == PER_GROUP else cols

    def num_groups(self, cols: int) -> int:
        return math.ceil(cols / self.group_width(cols))

    def storage_dtype(self):
        """The torch dtype that holds the levels."""
        import torch  # the records here are plain: only this method needs torch

        return torch.uint8 if self.qmax > 127 else torch.int8



METHODS = ("rtn", "llm-int8", "gptq", "awq", "smoothquant")
WEIGHT_ONLY = ("rtn", "gptq", "awq")
CALIBRATED = ("gptq", "awq", "smoothquant")
GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class QuantRecipe:
    method: str = "rtn"
    """rtn, llm-int8, gptq, awq or smoothquant."""
    bits: int = 8
    """Weight bits: 8 or 4 (llm-int8 and smoothquant are 8-bit)."""
    granularity: str = PER_CHANNEL
    """Weight scales per tensor, per output channel, or per group of input columns."""
    group_size: int = 128
    """Input columns per group (granularity 'group')."""
    symmetric: bool = True
    """Symmetric (scale only) or asymmetric (scale and zero point) weights."""
    head_bits: int | None = 8
    """The output layer (and a tied embedding): 8 (INT8 per channel), 4 (INT4 in groups of 128,
    weight-only recipes), or None to keep it in float."""
    activations: str | None = None
    """W8A8: 'token' (dynamic scale per token) or 'tensor' (one dynamic scale); None = weight-only."""
    outlier_threshold: float = 6.0
    """LLM.int8(): |activation| above which an input column stays in floating point."""
    damp: float = 0.01
    """GPTQ: fraction of the mean Hessian diagonal added to it."""
    desc_act: bool = True
    """GPTQ act-order: quantize columns in order of decreasing Hessian diagonal (on by default:
    on SmolLM2 it removes twice as much of RTN's perplexity loss as the natural order)."""
    awq_grid: int = 20
    """AWQ: points of the scale-exponent grid over [0, 1)."""
    alpha: float = 0.5
    """SmoothQuant migration strength."""
    calibration_samples: int = 32
    calibration_tokens: int = 512

    def __post_init__(self):
        def bad(msg):
            raise LmforgeError(msg)

        if self.method not in METHODS:
            bad(f"unknown quantization method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.bits not in (4, 8):
            bad(f"--bits must be 8 or 4, got {self.bits}")
        if self.granularity not in (PER_TENSOR, PER_CHANNEL, PER_GROUP):
            bad(f"granularity must be tensor, channel or group, got {self.granularity!r}")
        if self.granularity == PER_GROUP and self.group_size not in GROUP_SIZES:
            bad(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))} (what the integer kernels "
                f"take), got {self.group_size}")
        if self.method in ("llm-int8", "smoothquant"):
            if self.bits != 8:
                bad(f"{self.method} quantizes to 8 bits; got --bits {self.bits}")
            if not self.symmetric or self.granularity == PER_GROUP:
                bad(f"{self.method} uses symmetric INT8 weights per channel or per tensor")
        if self.method == "awq" and self.granularity != PER_GROUP:
            bad("awq quantizes group-wise: give --group-size")
        if self.method == "gptq" and self.granularity == PER_TENSOR:
            bad("gptq quantizes per channel or per group, not per tensor")
        if self.activations not in (None, "token", "tensor"):
            bad(f"activation quantization must be token or tensor, got {self.activations!r}")
        if self.activations is not None and (self.bits != 8 or not self.symmetric
                                             or self.granularity == PER_GROUP):
            bad("W8A8 needs symmetric 8-bit weights per channel or per tensor")
        if self.head_bits not in (None, 8, 4):
            bad(f"the output layer is quantized to 8 or 4 bits or kept in float, got head bits {self.head_bits}")
        if self.head_bits == 4 and self.activation_granularity is not None:
            bad("an INT4 output layer goes with weight-only recipes")
        if not 0 < self.damp < 1:
            bad(f"--damp must be in (0, 1), got {self.damp}")
        if self.awq_grid < 1:
            bad("--awq-grid must be at least 1")
        if not 0 <= self.alpha <= 1:
            bad(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.outlier_threshold <= 0:
            bad("--threshold must be positive")
        if self.calibration_samples < 1 or self.calibration_tokens < 2:
            bad("calibration needs at least one sample of two tokens")

    @property
    def weight_spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.symmetric, self.granularity, self.group_size)

    @property
    def head_spec(self) -> QuantSpec | None:
        if self.head_bits is None:
            return None
        if self.head_bits == 4:
            return QuantSpec(4, True, PER_GROUP, 128)
        return QuantSpec(8, True, PER_CHANNEL)

    @property
    def activation_granularity(self) -> str | None:
        """How activations are quantized at run time (None: weight-only)."""
        if self.method in ("llm-int8", "smoothquant"):
            return self.activations or "token"
        return self.activations

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantRecipe":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Quantization:
    """How a saved checkpoint's weights are quantized."""

    recipe: QuantRecipe
    body: QuantSpec
    """The format of the decoder blocks' linear layers."""
    head: QuantSpec | None
    """The output layer's format; None when it is kept in float."""


HEAD_BITS = {"float": None, "int8": 8, "int4": 4}


def recipe_with_defaults(method: str, bits: int = 8, group_size: int | None = None, granularity: str | None = None,
                         symmetric: bool = True, head: str = "int8", **settings) -> QuantRecipe:
    """The recipe `lmforge quantize` makes of its flags: unless told otherwise, 4-bit weights and
    AWQ go in groups of 128 and W8A8 methods per channel. `settings`: the other QuantRecipe fields."""
    if granularity is None:
        grouped = group_size is not None or bits == 4 or method == "awq"
        granularity = PER_GROUP if grouped and method not in ("llm-int8", "smoothquant") else PER_CHANNEL
    if head not in HEAD_BITS:
        raise LmforgeError(f"the output layer is int8, int4 or float, got {head!r}")
    return QuantRecipe(method=method, bits=bits, granularity=granularity, group_size=group_size or 128,
                       symmetric=symmetric, head_bits=HEAD_BITS[head], **settings)
