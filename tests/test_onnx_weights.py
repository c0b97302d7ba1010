"""MatMulNBits packing: the same dequantized weight, and ONNX Runtime's own kernel agrees."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lmforge.errors import LmforgeError
from lmforge.onnx.weights import dequantize_nbits, to_nbits
from lmforge.quant.rtn import PER_CHANNEL, PER_GROUP, PER_TENSOR, QuantizedWeight, QuantSpec, quantize

SPECS = [QuantSpec(4, True, PER_GROUP, 32), QuantSpec(4, False, PER_GROUP, 32), QuantSpec(4, False, PER_GROUP, 64),
         QuantSpec(8, True, PER_CHANNEL), QuantSpec(8, False, PER_CHANNEL), QuantSpec(8, True, PER_GROUP, 128),
         QuantSpec(4, True, PER_TENSOR)]


def random_weight(rows=24, cols=80, seed=0):
    # 80 columns: groups of 32 and 64 leave a shorter last group, as for hidden size 576 and 128.
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.1


def run_matmul_nbits(w, x: np.ndarray) -> np.ndarray:
    inputs = ["x", "B", "scales"] + (["zeros"] if w.zero_points is not None else [])
    inits = [numpy_helper.from_array(w.packed, "B"), numpy_helper.from_array(w.scales, "scales")]
    if w.zero_points is not None:
        inits.append(numpy_helper.from_array(w.zero_points, "zeros"))
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=w.in_features,
                            N=w.out_features, bits=w.bits, block_size=w.block_size, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.in_features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.out_features])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_packing_keeps_the_dequantized_weight_exactly(spec):
    qw = quantize(random_weight(), spec)
    packed = to_nbits(qw, None)
    assert packed.packed.dtype == np.uint8 and packed.block_size >= 16
    assert torch.equal(dequantize_nbits(packed), qw.dequantize())


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_onnx_runtime_computes_with_the_packed_weight(spec):
    qw = quantize(random_weight(seed=1), spec)
    x = np.random.default_rng(0).standard_normal((5, 80)).astype(np.float32)
    y = run_matmul_nbits(to_nbits(qw, None), x)
    expected = x @ qw.dequantize().numpy().T
    assert np.abs(y - expected).max() < 1e-4 * np.abs(expected).max()


def test_act_order_groups_become_an_input_permutation():
    w = random_weight(cols=64)
    base = quantize(w, QuantSpec(4, True, PER_GROUP, 32))
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    g_idx = torch.empty(64, dtype=torch.long)
    g_idx[order] = torch.arange(64) // 32  # columns of a group are scattered, as GPTQ's act-order leaves them
    qw = QuantizedWeight(base.q, base.scale, None, base.spec, g_idx)
    packed = to_nbits(qw, None)
    assert packed.input_perm is not None and sorted(packed.input_perm.tolist()) == list(range(64))
    assert torch.equal(dequantize_nbits(packed), qw.dequantize())
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    y = run_matmul_nbits(packed, x[:, packed.input_perm])
    assert np.abs(y - x @ qw.dequantize().numpy().T).max() < 1e-4


def test_block_sizes_onnx_runtime_cannot_take_are_refused():
    with pytest.raises(LmforgeError, match="power-of-two block"):
        to_nbits(quantize(random_weight(cols=96), QuantSpec(4, True, PER_GROUP, 48)), None)
    with pytest.raises(LmforgeError, match="4- or 8-bit"):
        to_nbits(quantize(random_weight(), QuantSpec(3, True, PER_CHANNEL)), None)
