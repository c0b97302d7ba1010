"""What an ONNX file holds: inputs and outputs, opsets, operators, initializer bytes by dtype.

Reads the graph without loading external weight data, so it is quick for large models.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge.errors import ModelError


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list  # ints and dimension names


@dataclass
class OnnxReport:
    path: str
    file_bytes: int
    external_data_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    operators: dict[str, int]
    initializer_bytes: dict[str, int]
    initializer_count: int
    is_decoder: bool
    manifest: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"


def _value_info(v) -> TensorInfo:
    t = v.type.tensor_type
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return TensorInfo(v.name, _type_name(t.elem_type), shape)


def _initializer_bytes(tensor) -> int:
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        if "length" in entries:
            return int(entries["length"])
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def inspect_onnx(path: str | os.PathLike) -> OnnxReport:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    graph = model.graph
    if not graph.node and not graph.input:
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    by_dtype: Counter[str] = Counter()
    locations = set()
    for tensor in graph.initializer:
        by_dtype[_type_name(tensor.data_type)] += _initializer_bytes(tensor)
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    external = sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
    operators = Counter(f"{n.domain}.{n.op_type}" if n.domain and n.domain != "ai.onnx" else n.op_type
                        for n in graph.node)
    inputs = [_value_info(v) for v in graph.input]
    names = {i.name for i in inputs}
    return OnnxReport(
        path=str(path), file_bytes=path.stat().st_size, external_data_bytes=external, ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        inputs=inputs, outputs=[_value_info(v) for v in graph.output],
        operators=dict(operators.most_common()), initializer_bytes=dict(by_dtype.most_common()),
        initializer_count=len(graph.initializer),
        is_decoder="input_ids" in names and any(n.startswith("past_key_values.") for n in names))


def serve_netron(path: str | os.PathLike) -> None:
    """Open the file in Netron (a browser viewer) when the optional package is installed."""
    try:
        import netron
    except ImportError:
        raise ModelError("--netron needs the optional package: pip install netron") from None
    netron.start(str(path))
