"""Build the decoder as an ONNX graph, written node by node with ONNX Runtime's fused operators.

Inputs and outputs are named as Hugging Face optimum names them. Per block: a fused RMSNorm
with the residual add (SkipSimplifiedLayerNormalization), one q|k|v projection, attention with
rotary embedding and the KV cache in one GroupQueryAttention, one gate|up projection. Linear
layers are MatMul (float) or MatMulNBits (4/8-bit weights). When a caller binds `past_*` and
`present_*` to the same buffer (max length long), the cache is updated in place.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmforge.config import ModelConfig
from lmforge.models.transformer import rope_inverse_frequencies
from lmforge.models.weights import FINAL_NORM
from lmforge.onnx.weights import DenseWeight, LayerSource, NBitsWeight

MS_DOMAIN = "com.microsoft"
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 24, 23
LOGITS_TO_KEEP = "logits_to_keep"  # extra input, default 0 = logits for every position


def past_names(layer: int) -> tuple[str, str]:
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def present_names(layer: int) -> tuple[str, str]:
    return f"present.{layer}.key", f"present.{layer}.value"


class _Graph:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def init(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        self.initializers.append(numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "",
           name: str | None = None, **attrs) -> list[str]:
        name = name or f"/{op_type}_{next(self._ids)}"
        names = [f"{name}/output_{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain or None, **attrs))
        return names

    def one(self, *args, **kwargs) -> str:
        return self.op(*args, **kwargs)[0]


def _linear(g: _Graph, x: str, w: DenseWeight | NBitsWeight, prefix: str, accuracy_level: int) -> str:
    if isinstance(w, DenseWeight):
        y = g.one("MatMul", [x, g.init(f"{prefix}.weight_t", w.weight.t().contiguous().numpy())], name=f"{prefix}/MatMul")
    else:
        if w.input_perm is not None:
            x = g.one("Gather", [x, g.init(f"{prefix}.input_perm", w.input_perm)], name=f"{prefix}/ActOrder", axis=-1)
        inputs = [x, g.init(f"{prefix}.qweight", w.packed), g.init(f"{prefix}.scales", w.scales)]
        if w.zero_points is not None:
            inputs.append(g.init(f"{prefix}.qzeros", w.zero_points))
        y = g.one("MatMulNBits", inputs, domain=MS_DOMAIN, name=f"{prefix}/MatMulNBits", K=w.in_features,
                  N=w.out_features, bits=w.bits, block_size=w.block_size, accuracy_level=accuracy_level)
    if w.bias is not None:
        y = g.one("Add", [y, g.init(f"{prefix}.bias", w.bias.numpy())], name=f"{prefix}/Add")
    return y


def _embedding(g: _Graph, source: LayerSource, head: DenseWeight | NBitsWeight, tied: bool) -> str:
    if not tied:
        return g.one("Gather", [g.init("embed_tokens.weight", source.embedding_table()), "input_ids"],
                     name="/embed_tokens/Gather")
    if isinstance(head, DenseWeight):  # tied float: read columns of the head's [hidden, vocab] matrix
        cols = g.one("Gather", ["lm_head.weight_t", "input_ids"], name="/embed_tokens/Gather", axis=1)
        return g.one("Transpose", [cols], name="/embed_tokens/Transpose", perm=[1, 2, 0])
    # Tied and quantized: gather rows of the head's blocks and dequantize them.
    rows = g.one("Reshape", ["lm_head.qweight", g.init("/embed_tokens/shape", np.array([head.out_features, -1]))],
                 name="/embed_tokens/Reshape")
    inputs = [rows, "input_ids", "lm_head.scales"] + (["lm_head.qzeros"] if head.zero_points is not None else [])
    return g.one("GatherBlockQuantized", inputs, domain=MS_DOMAIN, name="/embed_tokens/GatherBlockQuantized",
                 bits=head.bits, block_size=head.block_size, gather_axis=0, quantize_axis=1)


def _rotary_caches(g: _Graph, config: ModelConfig) -> tuple[str, str]:
    positions = np.arange(config.max_position_embeddings, dtype=np.float32)
    angles = np.outer(positions, rope_inverse_frequencies(config).numpy().astype(np.float32))
    return g.init("cos_cache", np.cos(angles).astype(np.float32)), g.init("sin_cache", np.sin(angles).astype(np.float32))


def build_decoder(config: ModelConfig, source: LayerSource, opset: int = DEFAULT_OPSET,
                  accuracy_level: int = 4, progress=None) -> onnx.ModelProto:
    """The decoder graph with KV cache inputs/outputs and dynamic axes.

    Kept as one function on purpose: it reads top to bottom in the order the decoder computes
    (inputs, mask lengths, embedding, the blocks, norm, the head)."""
    g = _Graph()
    eps = float(config.rms_norm_eps)
    kv_shape = ["batch_size", config.num_kv_heads, "past_sequence_length", config.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "logits_length", config.vocab_size])]
    for i in range(config.num_layers):
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in past_names(i)]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch_size", config.num_kv_heads,
                                                                       "present_sequence_length", config.head_dim])
                    for n in present_names(i)]
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []))
    g.init(LOGITS_TO_KEEP, np.array(0, dtype=np.int64))

    head = source.head()
    # GroupQueryAttention takes each row's last position and the longest total length.
    summed = g.one("ReduceSum", ["attention_mask", g.init("/const/axes1", np.array([1]))], name="/mask/ReduceSum",
                   keepdims=0)
    last = g.one("Sub", [summed, g.init("/const/one", np.array(1, dtype=np.int64))], name="/mask/Sub")
    seqlens_k = g.one("Cast", [last], name="/mask/seqlens_k", to=TensorProto.INT32)
    total_length = g.one("Cast", [g.one("Gather", [g.one("Shape", ["attention_mask"], name="/mask/Shape"),
                                                   g.init("/const/index1", np.array(1))], name="/mask/Gather")],
                         name="/mask/total_sequence_length", to=TensorProto.INT32)
    cos_cache, sin_cache = _rotary_caches(g, config)

    tied = source.head_is_embedding
    if isinstance(head, DenseWeight):
        g.init("lm_head.weight_t", head.weight.t().contiguous().numpy())
    x = _embedding(g, source, head, tied)
    residual, pending = x, None
    layers = range(config.num_layers)
    for i in (progress(layers) if progress else layers):
        p = f"/model/layers.{i}"
        weights = source.block_layers(i)
        norms = {attr: g.init(name, value) for attr, (name, value) in source.block_norms(i).items()}
        ln1 = norms["attention_norm"]
        if pending is None:
            # RMSNormalization is standard from opset 23; before, ONNX Runtime's own operator stands in.
            norm_op = "RMSNormalization" if opset >= 23 else "SimplifiedLayerNormalization"
            h = g.one(norm_op, [residual, ln1], name=f"{p}/input_layernorm", axis=-1, epsilon=eps, stash_type=1)
        else:
            h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, ln1], 4, MS_DOMAIN,
                                     f"{p}/input_layernorm", epsilon=eps)
        qkv = _linear(g, h, weights["attention.wqkv"], f"model.layers.{i}.attn.qkv_proj", accuracy_level)
        attention_attrs = dict(num_heads=config.num_heads, kv_num_heads=config.num_kv_heads,
                               scale=float(config.head_dim ** -0.5), do_rotary=1, rotary_interleaved=0)
        if config.sliding_window and config.sliding_window < config.max_position_embeddings:
            attention_attrs["local_window_size"] = int(config.sliding_window)
        attn = g.op("GroupQueryAttention",
                    [qkv, "", "", *past_names(i), seqlens_k, total_length, cos_cache, sin_cache],
                    [f"{p}/attn/output_0", *present_names(i)], MS_DOMAIN, f"{p}/attn/GroupQueryAttention",
                    **attention_attrs)[0]
        o = _linear(g, attn, weights["attention.wo"], f"model.layers.{i}.attn.o_proj", accuracy_level)
        ln2 = norms["ffn_norm"]
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, ln2], 4, MS_DOMAIN,
                                 f"{p}/post_attention_layernorm", epsilon=eps)
        gate_up = _linear(g, h, weights["feed_forward.w13"], f"model.layers.{i}.mlp.gate_up_proj", accuracy_level)
        gate, up = g.op("Split", [gate_up, g.init(f"{p}/mlp/split", np.array([config.intermediate_size] * 2))], 2,
                        name=f"{p}/mlp/Split", axis=-1)
        silu = g.one("Mul", [gate, g.one("Sigmoid", [gate], name=f"{p}/mlp/Sigmoid")], name=f"{p}/mlp/SiLU")
        act = g.one("Mul", [silu, up], name=f"{p}/mlp/Mul")
        pending = _linear(g, act, weights["feed_forward.w2"], f"model.layers.{i}.mlp.down_proj", accuracy_level)

    final_norm = g.init(FINAL_NORM, source.norm(FINAL_NORM))
    h = g.op("SkipSimplifiedLayerNormalization", [pending, residual, final_norm], 1, MS_DOMAIN,
             "/model/norm", epsilon=eps)[0]
    # Only the last `logits_to_keep` positions reach the vocabulary projection (0: all of them).
    start = g.one("Neg", [g.one("Reshape", [LOGITS_TO_KEEP, g.init("/const/shape1", np.array([1]))],
                                name="/logits/Reshape")], name="/logits/Neg")
    h = g.one("Slice", [h, start, g.init("/const/int_max", np.array([np.iinfo(np.int64).max])),
                        g.init("/const/axis1", np.array([1]))], name="/logits/Slice")
    if isinstance(head, DenseWeight):
        logits = g.one("MatMul", [h, "lm_head.weight_t"], name="/lm_head/MatMul")
    else:
        logits = _linear(g, h, head, "lm_head", accuracy_level)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/logits/Identity"))

    graph = helper.make_graph(g.nodes, "lmforge_decoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="lmforge")
    model.ir_version = min(model.ir_version, 10)
    return model
