import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import RequestError
from lmforge.kv_cache import KVCache

CONFIG = ModelConfig("llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=4, max_position_embeddings=64)


def test_bytes_follow_gqa_formula():
    cache = KVCache(CONFIG, num_slots=3, max_seq_len=10, dtype=torch.float32)
    per_token = 2 * CONFIG.num_layers * CONFIG.num_kv_heads * CONFIG.head_dim * 4
    assert cache.bytes_per_token == per_token == CONFIG.kv_cache_bytes_per_token(4)
    assert cache.nbytes == per_token * 3 * 10
    assert KVCache(CONFIG, 3, 10, torch.bfloat16).nbytes == cache.nbytes // 2


def test_slots_allocate_and_free():
    cache = KVCache(CONFIG, num_slots=2, max_seq_len=8)
    a, b = cache.allocate(), cache.allocate()
    assert {a, b} == {0, 1} and cache.free_slots == 0
    with pytest.raises(RuntimeError):
        cache.allocate()
    cache.free(a)
    assert cache.used_slots == 1 and cache.allocate() == a
    with pytest.raises(RuntimeError):
        cache.free(5)


def test_view_writes_each_row_to_its_slot_and_position():
    cache = KVCache(CONFIG, num_slots=4, max_seq_len=8)
    positions = torch.tensor([[3], [5]])
    view = cache.view([3, 1], positions)  # not consecutive: gathered, not sliced
    k = torch.randn(2, CONFIG.num_kv_heads, 1, CONFIG.head_dim)
    v = torch.randn_like(k)
    keys, values = view.update_and_fetch(0, k, v)
    assert keys.shape == (2, CONFIG.num_kv_heads, 6, CONFIG.head_dim)
    assert torch.equal(cache.keys[0][3, :, 3], k[0, :, 0])
    assert torch.equal(cache.values[0][1, :, 5], v[1, :, 0])
    assert torch.equal(keys[1, :, 5], k[1, :, 0])
    assert cache.keys[0][0].abs().sum() == 0  # other slots untouched


def test_view_rejects_positions_past_capacity():
    cache = KVCache(CONFIG, num_slots=1, max_seq_len=8)
    with pytest.raises(RequestError):
        cache.view([0], torch.tensor([[8]]))
