"""`lmforge probe`: measure this machine into a device profile.

Memory: total RAM; bandwidth: a large copy. Kernels: for each backend and precision lmforge runs
here, one-row products (decode) over matrices of several sizes, many distinct ones so they stream
from memory as a model's weights do, and a 512-row product (prefill) for compute.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import psutil
import torch

from lmforge.device.profile import DeviceProfile, KernelRates

K = 1024                               # input width of every probe matrix
ROWS = (256, 1024, 4096, 16384)        # output widths: 1 MiB .. 64 MiB in float32
STREAM_BYTES = 192 * 2**20             # distinct matrices per size, so they come from memory
PREFILL_ROWS = 512                     # rows of the compute (prefill) probe
KERNELS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
           ("onnxruntime", "int4"))
NBITS_BLOCK = 32                       # what `lmforge export onnx` writes


def bytes_per_weight(backend: str, precision: str, block: int = NBITS_BLOCK) -> float:
    """Bytes a kernel reads per weight, scales included."""
    if precision in ("int8", "int4") and backend == "onnxruntime":
        return (1.0 if precision == "int8" else 0.5) + 4 / block  # a float32 scale per block
    return {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0 + 2 / 128, "int4": 0.5 + 4 / 128}[precision]


def _best(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after a warm-up (medians, as the benchmarks report)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def attention_rate(repeats: int = 5) -> float:
    """FLOP/s of causal attention over a 512-token prompt (8 heads of 64), as prefill runs it."""
    q, k, v = (torch.randn(1, 8, PREFILL_ROWS, 64) for _ in range(3))
    flops = 2 * 2 * 8 * 64 * PREFILL_ROWS * (PREFILL_ROWS + 1) / 2
    with torch.inference_mode():
        return flops / _best(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), repeats)


def copy_bandwidth(repeats: int = 5) -> float:
    """Bytes/s read from memory by a large copy (the read half of its traffic)."""
    src = torch.ones(256 * 2**20 // 4)
    dst = torch.empty_like(src)
    return src.numel() * 4 / _best(lambda: dst.copy_(src), repeats)


def _engine_layer(weight: torch.Tensor):
    """The layer the engine builds for `weight` (packed where its model would be), so the probe
    times the kernels the engine runs, fed float32 activations as the engine feeds them."""
    from lmforge.models.layers import DenseLinear

    layer = DenseLinear.from_weight(weight)
    layer.pack_()
    return layer


def _torch_rates(precision: str, repeats: int, rows_list=ROWS, stream_bytes=STREAM_BYTES) -> KernelRates:
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    stream = []
    for rows in rows_list:
        size = rows * K * bytes_per_weight("torch", precision)
        layers = [_engine_layer(torch.randn(rows, K, generator=gen).to(dtype))
                  for _ in range(max(4, int(stream_bytes // size)))]
        x = torch.randn(1, K, generator=gen)

        def run():
            for layer in layers:
                layer(x)

        with torch.inference_mode():
            stream.append((size, size * len(layers) / _best(run, repeats)))
    curve = []
    a = torch.randn(PREFILL_ROWS, K, generator=gen)
    for rows in rows_list:
        layer = _engine_layer(torch.randn(rows, K, generator=gen).to(dtype))
        with torch.inference_mode():
            seconds = _best(lambda: layer(a), repeats)
        curve.append((rows * K * bytes_per_weight("torch", precision), 2 * PREFILL_ROWS * K * rows / seconds))
    return KernelRates(stream, max(f for _, f in curve), curve)


BATCH_ROWS = (1, 2, 4, 8)
BATCH_MATRIX = 1536  # output width of the batch-cost probe (a decoder layer's size)


def batch_costs(backend: str, precision: str, repeats: int, stream_bytes=STREAM_BYTES) -> list[tuple[float, float]]:
    """Time of products with 1, 2, 4, 8 input rows, relative to one row (weights streamed from memory)."""
    count = max(4, int(stream_bytes // (BATCH_MATRIX * K * bytes_per_weight(backend, precision))))
    times = {}
    if backend == "torch":
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        gen = torch.Generator().manual_seed(0)
        layers = [_engine_layer(torch.randn(BATCH_MATRIX, K, generator=gen).to(dtype)) for _ in range(count)]
        for m in BATCH_ROWS:
            x = torch.randn(m, K, generator=gen)
            with torch.inference_mode():
                times[m] = _best(lambda: [layer(x) for layer in layers], repeats)
    else:
        for m in BATCH_ROWS:
            session = _ort_session(_ort_graph(precision, BATCH_MATRIX, count, m))
            x = np.random.default_rng(1).standard_normal((m, K), dtype=np.float32)
            times[m] = _best(lambda: session.run(None, {"x": x}), repeats)
    return [(float(m), times[m] / times[1]) for m in BATCH_ROWS]


def _ort_graph(precision: str, rows: int, count: int, m: int):
    """`count` independent products of one input x [m, K] with [K, rows] weights, as one ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []
    for i in range(count):
        y = f"y{i}"
        if precision == "fp32":
            inits.append(numpy_helper.from_array(rng.standard_normal((K, rows), dtype=np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
        else:
            bits = 8 if precision == "int8" else 4
            blocks = K // NBITS_BLOCK
            packed = rng.integers(0, 256, (rows, blocks, NBITS_BLOCK * bits // 8), dtype=np.uint8)
            scales = (rng.random((rows, blocks), dtype=np.float32) + 0.5) * 0.01
            inits += [numpy_helper.from_array(packed, f"w{i}"), numpy_helper.from_array(scales, f"s{i}")]
            nodes.append(helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [y], domain="com.microsoft",
                                          K=K, N=rows, bits=bits, block_size=NBITS_BLOCK, accuracy_level=4))
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [m, rows]))
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, K])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def _ort_session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_rates(precision: str, repeats: int, rows_list=ROWS, stream_bytes=STREAM_BYTES) -> KernelRates:
    stream = []
    for rows in rows_list:
        size = rows * K * bytes_per_weight("onnxruntime", precision)
        count = max(4, int(stream_bytes // size))
        if rows * K * 4 * count > 1.8 * 2**30:  # a protobuf holds at most 2 GB
            count = max(4, int(1.8 * 2**30 // (rows * K * 4)))
        session = _ort_session(_ort_graph(precision, rows, count, 1))
        x = np.random.default_rng(1).standard_normal((1, K), dtype=np.float32)
        stream.append((size, size * count / _best(lambda: session.run(None, {"x": x}), repeats)))
        del session
    curve = []
    x = np.random.default_rng(1).standard_normal((PREFILL_ROWS, K), dtype=np.float32)
    for rows in rows_list:
        session = _ort_session(_ort_graph(precision, rows, 1, PREFILL_ROWS))
        seconds = _best(lambda: session.run(None, {"x": x}), repeats)
        curve.append((rows * K * bytes_per_weight("onnxruntime", precision), 2 * PREFILL_ROWS * K * rows / seconds))
    return KernelRates(stream, max(f for _, f in curve), curve)


TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
OVERHEAD_LAYERS = (2, 10)
CONTEXT = 64  # positions already in the cache while the probe decodes


def _tiny_model(backend: str, precision: str, layers: int, folder):
    """A random Llama-shaped model so small that a decode step is nearly all fixed costs."""
    import transformers

    from lmforge.config import ModelConfig

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=layers, **TINY)).eval()
    config = ModelConfig.from_hf_dict(hf.config.to_dict())
    tensors = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    if backend == "torch":
        from lmforge.models.transformer import Transformer

        return Transformer.from_hf_tensors(config, tensors, torch.float32 if precision == "fp32" else torch.bfloat16), config
    import onnx

    from lmforge.loading import Checkpoint, ModelSource
    from lmforge.onnx.graph import build_decoder
    from lmforge.onnx.runtime import OnnxDecoder
    from lmforge.onnx.weights import LayerSource

    checkpoint = Checkpoint(config, tensors, folder, ModelSource("hf", folder, "probe"))
    model_file = folder / f"probe-{precision}-{layers}.onnx"
    onnx.save_model(build_decoder(config, LayerSource(checkpoint, precision, group_size=NBITS_BLOCK)), str(model_file))
    return OnnxDecoder(model_file, config), config


def _decode_step_s(model, config, dtype: torch.dtype, steps: int = 48) -> float:
    from lmforge.kv_cache import KVCache

    cache = KVCache(config, 1, CONTEXT + steps + 8, dtype)
    with torch.inference_mode():
        prompt = torch.arange(CONTEXT)[None]
        model(prompt % config.vocab_size, prompt, cache.view([0], prompt), last_only=True)
        times = []
        for i in range(steps):
            position = torch.tensor([[CONTEXT + i]])
            t = time.perf_counter()
            model(position % config.vocab_size, position, cache.view([0], position), last_only=True)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def step_overheads(backend: str, precision: str) -> tuple[float, float]:
    """(per step, per layer) seconds of a decode step that do not depend on weight bytes."""
    import tempfile
    from pathlib import Path

    dtype = torch.bfloat16 if (backend, precision) == ("torch", "bf16") else torch.float32
    with tempfile.TemporaryDirectory(prefix="lmforge-probe-") as tmp:
        (few, few_s), (many, many_s) = [
            (layers, _decode_step_s(*_tiny_model(backend, precision, layers, Path(tmp)), dtype))
            for layers in OVERHEAD_LAYERS]
    per_layer = max(0.0, (many_s - few_s) / (many - few))
    return max(0.0, few_s - few * per_layer), per_layer


def probe(name: str | None = None, repeats: int = 5, on_step=None, kernels=KERNELS, rows=ROWS,
          stream_bytes: int = STREAM_BYTES) -> DeviceProfile:
    """Measure this machine (one to two minutes on 2 cores). kernels, rows, stream_bytes: what to
    measure and how big (smaller is faster and less faithful)."""
    steps = [("memory bandwidth", None), *[(f"{b} {p}", (b, p)) for b, p in kernels]]
    measured_bandwidth = None
    measured: dict[str, KernelRates] = {}
    for label, kernel in steps:
        if on_step:
            on_step(label)
        if kernel is None:
            measured_bandwidth = copy_bandwidth(repeats)
        else:
            backend, precision = kernel
            measure = _torch_rates if backend == "torch" else _ort_rates
            rates = measure(precision, repeats, rows, stream_bytes)
            rates.step_s, rates.layer_s = step_overheads(backend, precision)
            rates.batch_cost = batch_costs(backend, precision, repeats, stream_bytes)
            measured[f"{backend}/{precision}"] = rates
    compute: dict[str, float] = {}
    for key, rates in measured.items():
        precision = key.split("/")[1]
        compute[precision] = max(compute.get(precision, 0.0), rates.compute or 0.0)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    compute["attention"] = attention_rate(repeats)
    return DeviceProfile(
        name=name or f"{platform.node() or 'this-machine'}-cpu", memory_bytes=psutil.virtual_memory().total,
        memory_bandwidth=measured_bandwidth, compute=compute, kernels=measured,
        description=f"measured by lmforge probe on {machine}",
        measured={"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
                  "torch_threads": torch.get_num_threads(), "repeats": repeats})
