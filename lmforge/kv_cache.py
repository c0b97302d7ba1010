"""A preallocated KV cache of fixed slots; one forward step can serve several slots at once.

Each slot holds one sequence from position 0. A `CacheView` binds the slots of one forward
step; the model's attention layers call `view.update_and_fetch(layer, k, v)`.

With dtype int8 the cache stores each token's key and value of each head as INT8 with its own
float32 scale (max |x| / 127 over head_dim): a little over half the bytes of bfloat16.
"""

from __future__ import annotations

import torch

from lmforge.config import ModelConfig
from lmforge.errors import RequestError


class KVCache:
    def __init__(self, config: ModelConfig, num_slots: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32):
        if num_slots <= 0 or max_seq_len <= 0:
            raise ValueError("num_slots and max_seq_len must be positive")
        self.config = config
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.quantized = dtype == torch.int8
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
            raise ValueError(f"KV cache dtype must be float32, bfloat16, float16 or int8, got {dtype}")
        shape = (num_slots, config.num_kv_heads, max_seq_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(config.num_layers)]
        scale_shape = (num_slots, config.num_kv_heads, max_seq_len, 1)
        self.key_scales = [torch.zeros(scale_shape) for _ in range(config.num_layers)] if self.quantized else []
        self.value_scales = [torch.zeros(scale_shape) for _ in range(config.num_layers)] if self.quantized else []
        self._free = list(range(num_slots))

    # --- slot bookkeeping ---------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def used_slots(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("no free KV-cache slot")
        self._free.sort()
        return self._free.pop(0)

    def free(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise RuntimeError(f"slot {slot} is not allocated")
        self._free.append(slot)

    # --- sizes --------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values + self.key_scales + self.value_scales)

    @property
    def bytes_per_token(self) -> int:
        c = self.config
        per_head = c.head_dim * self.keys[0].element_size() + (4 if self.quantized else 0)
        return 2 * c.num_layers * c.num_kv_heads * per_head

    def slot_block(self, layer: int, first_slot: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer `layer` for `count` consecutive slots from `first_slot`, as views
        [count, kv_heads, max_seq_len, head_dim] into the cache (a runtime may write them in place)."""
        rows = slice(first_slot, first_slot + count)
        return self.keys[layer][rows], self.values[layer][rows]

    def view(self, slots: list[int], positions: torch.Tensor) -> "CacheView":
        """Bind `slots` (one per batch row) for a step whose tokens sit at `positions` [B, T]."""
        key_length = int(positions.max()) + 1
        if key_length > self.max_seq_len:
            raise RequestError(f"sequence length {key_length} exceeds the cache's {self.max_seq_len} tokens")
        return CacheView(self, slots, positions, key_length)


class CacheView:
    """The slots and positions of one forward step."""

    def __init__(self, cache: KVCache, slots: list[int], positions: torch.Tensor, key_length: int):
        self.cache = cache
        self.slots = slots
        self.positions = positions
        self.key_length = key_length
        self._slot_index = torch.tensor(slots, dtype=torch.long)
        first = slots[0]
        # Consecutive slots are read as a slice (no copy); others are gathered.
        self._slot_range = slice(first, first + len(slots)) if slots == list(range(first, first + len(slots))) else None
        self._write_slots = self._slot_index[:, None].expand_as(positions)
        # One sequence at consecutive positions (every single-request step): a slice write,
        # several times cheaper than the general scatter for the many small writes of decoding.
        self._span = None
        if len(slots) == 1:
            start = int(positions[0, 0])
            end = start + positions.shape[1]
            if end - start == 1 or torch.equal(positions[0], torch.arange(start, end)):
                self._span = (first, start, end)

    @property
    def stored_dtype(self) -> torch.dtype:
        """What `update_and_fetch` returns keys and values in for `dtype` inputs: the cache's own
        dtype, or for an int8 cache the dtype they came in (float32 here)."""
        return torch.float32 if self.cache.quantized else self.cache.dtype

    def slot_runs(self) -> list[tuple[int, int, int]]:
        """(first batch row, row count, first slot) of each run of consecutive slots."""
        runs, start = [], 0
        slots = self.slots
        for i in range(1, len(slots) + 1):
            if i == len(slots) or slots[i] != slots[i - 1] + 1:
                runs.append((start, i - start, slots[start]))
                start = i
        return runs

    def update_and_fetch(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v [B, kv_heads, T, head_dim]; return all keys/values up to key_length."""
        cache = self.cache
        rows = self._slot_range if self._slot_range is not None else self._slot_index
        if cache.quantized:
            return (self._store_int8(cache.keys[layer], cache.key_scales[layer], k, rows),
                    self._store_int8(cache.values[layer], cache.value_scales[layer], v, rows))
        keys, values = cache.keys[layer], cache.values[layer]
        if self._span is not None:
            slot, start, end = self._span
            keys[slot, :, start:end] = k[0]
            values[slot, :, start:end] = v[0]
        else:
            keys[self._write_slots, :, self.positions] = k.transpose(1, 2).to(keys.dtype)
            values[self._write_slots, :, self.positions] = v.transpose(1, 2).to(values.dtype)
        return keys[rows, :, : self.key_length], values[rows, :, : self.key_length]

    def _store_int8(self, levels: torch.Tensor, scales: torch.Tensor, x: torch.Tensor, rows) -> torch.Tensor:
        """Quantize x per token and head, store it, return the dequantized prefix in x's dtype."""
        xf = x.float()
        scale = xf.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
        q = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8)
        levels[self._write_slots, :, self.positions] = q.transpose(1, 2)
        scales[self._write_slots, :, self.positions] = scale.transpose(1, 2)
        stored = levels[rows, :, : self.key_length].to(torch.float32) * scales[rows, :, : self.key_length]
        return stored.to(x.dtype)
