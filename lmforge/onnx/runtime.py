"""Run an exported decoder with ONNX Runtime behind the model interface the engine uses.

`OnnxDecoder(tokens, positions, cache_view, last_only)` returns logits like `Transformer`. The
engine's KV cache tensors are ONNX Runtime's cache too: each layer's past and present are bound
(IOBinding) to the same slice of the slot buffer, and GroupQueryAttention writes the new keys and
values in place, so nothing is copied between steps.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ModelError, RequestError
from lmforge.onnx.graph import LOGITS_TO_KEEP, past_names, present_names

REQUIRED_INPUTS = ("input_ids", "attention_mask", "position_ids")


class OnnxDecoder:
    def __init__(self, model_file: Path, config: ModelConfig, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # logits_to_keep is an input with a default, on purpose
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{model_file}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None
        check_decoder_signature(self.session, config, model_file)
        self.config = config
        self.dtype = torch.float32
        # Per cache (weakly held: a binding must never outlive the buffers it points into).
        self._bindings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- the model interface -------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache=None,
                 last_only: bool = False) -> torch.Tensor:
        if cache is None:
            return self._run_without_cache(tokens, positions, last_only)
        if cache.cache.dtype != torch.float32:  # int8 caches included
            raise RequestError("the ONNX Runtime backend keeps its KV cache in float32")
        parts = []
        for start, count, first_slot in cache.slot_runs():
            rows = slice(start, start + count)
            parts.append(self._run_slots(tokens[rows], positions[rows], cache.cache, first_slot, count, last_only))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _binding(self, cache, first_slot: int, count: int):
        """The past/present bindings of `count` slots from `first_slot`, made once and reused."""
        bindings = self._bindings.setdefault(cache, {})
        binding = bindings.get((first_slot, count))
        if binding is not None:
            return binding
        binding = self.session.io_binding()
        for layer in range(self.config.num_layers):
            (past_key, past_value), (present_key, present_value) = past_names(layer), present_names(layer)
            keys, values = cache.slot_block(layer, first_slot, count)
            for buffer, past, present in ((keys, past_key, present_key), (values, past_value, present_value)):
                shape, pointer = tuple(buffer.shape), buffer.data_ptr()
                binding.bind_input(past, "cpu", 0, np.float32, shape, pointer)
                binding.bind_output(present, "cpu", 0, np.float32, shape, pointer)
        bindings[(first_slot, count)] = binding
        return binding

    def _run_slots(self, tokens, positions, cache, first_slot: int, count: int, last_only: bool) -> torch.Tensor:
        lengths = positions[:, -1] + 1
        if int(lengths.max()) > cache.max_seq_len:
            raise RequestError(f"sequence length {int(lengths.max())} exceeds the cache's {cache.max_seq_len} tokens")
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).to(torch.int64)
        keep = torch.tensor(1 if last_only else 0, dtype=torch.int64)
        logits = torch.empty(count, 1 if last_only else tokens.shape[1], self.config.vocab_size)
        inputs = {"input_ids": tokens.contiguous(), "attention_mask": mask,
                  "position_ids": positions.contiguous(), LOGITS_TO_KEEP: keep}
        binding = self._binding(cache, first_slot, count)
        for name, tensor in inputs.items():
            binding.bind_input(name, "cpu", 0, np.int64, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output("logits", "cpu", 0, np.float32, tuple(logits.shape), logits.data_ptr())
        self.session.run_with_iobinding(binding)
        return logits

    def _run_without_cache(self, tokens, positions, last_only: bool) -> torch.Tensor:
        if not bool((positions == torch.arange(positions.shape[1])).all()):
            raise RequestError("without a cache, positions must run from 0")
        c = self.config
        batch, length = tokens.shape
        empty = np.zeros((batch, c.num_kv_heads, 0, c.head_dim), dtype=np.float32)
        feed = {"input_ids": tokens.numpy(), "attention_mask": np.ones((batch, length), dtype=np.int64),
                "position_ids": positions.numpy(), LOGITS_TO_KEEP: np.array(1 if last_only else 0, dtype=np.int64)}
        for layer in range(c.num_layers):
            feed.update({name: empty for name in past_names(layer)})
        logits = self.session.run(["logits"], feed)[0]
        return torch.from_numpy(logits)


def check_decoder_signature(session, config: ModelConfig, where) -> None:
    """A clear error when the file is not a decoder with the inputs lmforge feeds."""
    names = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    missing += [n for layer in range(config.num_layers) for n in past_names(layer) if n not in names]
    if missing or "logits" not in outputs:
        what = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "") if missing else "output 'logits'"
        raise ModelError(f"{where}: not a decoder with a KV cache as lmforge exports it (missing {what})")
