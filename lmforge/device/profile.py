"""A device profile: memory, memory bandwidth and compute per dtype, in JSON or YAML.

Written by hand from a data sheet (peak figures) or by `lmforge probe` (measured, with the rates
its kernels reach per matrix size, which predict far better than peaks). Units may be written as
text: memory "8GB", bandwidth "68GB/s", compute "16TFLOPS" / "32TOPS".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from lmforge.atomic import write_json
from lmforge.errors import LmforgeError
from lmforge.plan import parse_bytes

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4", "attention")  # attention: causal prefill attention
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtp]?)(b/s|flops|ops|/s)?\s*$", re.I)
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}


@dataclass
class KernelRates:
    """What one backend's kernels reach for one precision on this device."""
    stream: list[tuple[float, float]] = field(default_factory=list)  # (matrix bytes, bytes/s) for one-row products
    compute: float | None = None  # FLOP/s of a prefill-sized product (the largest measured)
    compute_curve: list[tuple[float, float]] = field(default_factory=list)  # (matrix bytes, FLOP/s) at 512 rows
    step_s: float | None = None   # fixed cost of one decode step (embedding, final norm, dispatch)
    layer_s: float | None = None  # fixed cost per layer of a decode step (norms, rotary, attention, dispatch)
    batch_cost: list[tuple[float, float]] = field(default_factory=list)  # (rows, time / time of one row)

    def batch_factor(self, rows: int) -> float:
        """How much longer a product with `rows` input rows takes than with one (linear between points)."""
        points = sorted(self.batch_cost)
        if rows <= 1 or not points:
            return 1.0
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if rows <= x1:
                return y0 + (rows - x0) / (x1 - x0) * (y1 - y0)
        (x0, y0), (x1, y1) = points[-2:] if len(points) > 1 else ((0, 0), points[-1])
        return y1 + (rows - x1) * (y1 - y0) / (x1 - x0)

    def bandwidth_at(self, matrix_bytes: float) -> float | None:
        """Bytes/s for a matrix of this size, interpolated in log(size) between measured points."""
        return _interpolate(self.stream, matrix_bytes)

    def compute_at(self, matrix_bytes: float) -> float | None:
        """FLOP/s of a prefill product with a weight matrix of this size."""
        return _interpolate(self.compute_curve, matrix_bytes) or self.compute


def _interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """y at x, linear in log(x) between measured points, flat beyond them."""
    if not curve:
        return None
    points = sorted(curve)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + f * (y1 - y0)
    return points[-1][1]


@dataclass
class DeviceProfile:
    name: str
    memory_bytes: int
    memory_bandwidth: float          # bytes/s (peak, or what a large copy reads)
    compute: dict[str, float]        # FLOP/s (or OP/s) per precision
    kernels: dict[str, KernelRates] = field(default_factory=dict)  # "backend/precision" -> measured rates
    description: str = ""
    measured: dict = field(default_factory=dict)  # probe: date, machine, copy bandwidth, ...

    def rates(self, backend: str, precision: str) -> KernelRates | None:
        return self.kernels.get(f"{backend}/{precision}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kernels"] = {k: {"stream": [list(p) for p in v.stream], "compute": v.compute,
                               "compute_curve": [list(p) for p in v.compute_curve], "step_s": v.step_s,
                               "layer_s": v.layer_s, "batch_cost": [list(p) for p in v.batch_cost]}
                           for k, v in self.kernels.items()}
        return data


def parse_rate(value, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise LmforgeError(f"{what}: must be positive, got {value}")
        return float(value)
    m = _RATE.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise LmforgeError(f"{what}: cannot read a rate from {value!r} (e.g. 68GB/s, 16TFLOPS, 32TOPS)")
    return float(m.group(1)) * _SCALE[m.group(2).lower()]


def profile_from_dict(data: dict, where: str = "profile") -> DeviceProfile:
    if not isinstance(data, dict):
        raise LmforgeError(f"{where}: a device profile is a mapping (name, memory, memory_bandwidth, compute)")
    missing = [k for k in ("memory", "memory_bandwidth", "compute") if k not in data and k + "_bytes" not in data]
    if missing:
        raise LmforgeError(f"{where}: missing {', '.join(missing)} (a profile needs memory, memory_bandwidth, "
                           "compute per dtype)")
    memory = data.get("memory_bytes", data.get("memory"))
    memory = int(memory) if isinstance(memory, (int, float)) else parse_bytes(str(memory))
    compute = data["compute"]
    if not isinstance(compute, dict) or not compute:
        raise LmforgeError(f"{where}: compute is a mapping of dtype to FLOP/s, e.g. {{fp16: 16TFLOPS}}")
    unknown = [k for k in compute if k not in PRECISIONS]
    if unknown:
        raise LmforgeError(f"{where}: unknown dtype {unknown[0]!r} in compute; known: {', '.join(PRECISIONS)}")
    kernels = {}
    for key, rates in (data.get("kernels") or {}).items():
        try:
            stream = [(float(b), float(r)) for b, r in rates.get("stream", [])]
            curve = [(float(b), float(r)) for b, r in rates.get("compute_curve", [])]
            peak, step_s, layer_s = (None if rates.get(k) is None else float(rates[k])
                                     for k in ("compute", "step_s", "layer_s"))
            batch = [(float(m), float(f)) for m, f in rates.get("batch_cost", [])]
            kernels[key] = KernelRates(stream, peak, curve, step_s, layer_s, batch)
        except (TypeError, ValueError, AttributeError):
            raise LmforgeError(f"{where}: kernels.{key} is not a list of [bytes, bytes/s] pairs") from None
    return DeviceProfile(name=str(data.get("name", Path(where).stem)), memory_bytes=memory,
                         memory_bandwidth=parse_rate(data["memory_bandwidth"], f"{where}: memory_bandwidth"),
                         compute={k: parse_rate(v, f"{where}: compute.{k}") for k, v in compute.items()},
                         kernels=kernels, description=str(data.get("description", "")),
                         measured=dict(data.get("measured") or {}))


def shipped_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("lmforge.data.devices").iterdir()
                  if p.name.endswith(".yaml"))


def load_profile(spec: str | Path) -> DeviceProfile:
    """A shipped profile's name (e.g. 'accelerator-8gb') or a JSON/YAML file."""
    import yaml

    name = str(spec)
    shipped = resources.files("lmforge.data.devices") / f"{name}.yaml"
    path = Path(spec)
    if not path.is_file() and shipped.is_file():
        text, where = shipped.read_text(encoding="utf-8"), name
    elif path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        raise LmforgeError(f"{name}: no such device profile file, and not a shipped profile "
                           f"({', '.join(shipped_profiles())})")
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise LmforgeError(f"{where}: not valid YAML or JSON ({str(e).splitlines()[0]})") from None
    return profile_from_dict(data, where)


def save_profile(profile: DeviceProfile, path: str | Path) -> Path:
    return write_json(path, profile.to_dict())


def dumps(profile: DeviceProfile) -> str:
    return json.dumps(profile.to_dict(), indent=2)
