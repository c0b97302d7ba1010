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


@pytest.mark.parametrize("positions", [[[2, 3, 4]], [[6]], [[1, 4, 2]]], ids=["span", "one", "scattered"])
def test_single_slot_writes_land_at_their_positions(positions):
    """One slot at consecutive positions takes the slice path, other positions the scatter;
    both store each token at its position, converting to the cache's dtype."""
    cache = KVCache(CONFIG, num_slots=3, max_seq_len=8, dtype=torch.bfloat16)
    positions = torch.tensor(positions)
    length = positions.shape[1]
    k = torch.randn(1, CONFIG.num_kv_heads, length, CONFIG.head_dim)
    v = torch.randn_like(k)
    keys, values = cache.view([2], positions).update_and_fetch(1, k, v)
    for i, position in enumerate(positions[0].tolist()):
        assert torch.equal(cache.keys[1][2, :, position], k[0, :, i].bfloat16())
        assert torch.equal(values[0, :, position], v[0, :, i].bfloat16())
    written = positions[0].tolist()
    untouched = [p for p in range(8) if p not in written]
    assert cache.keys[1][2, :, untouched].abs().sum() == 0 and cache.keys[1][:2].abs().sum() == 0
    assert keys.shape[2] == max(written) + 1


def test_view_rejects_positions_past_capacity():
    cache = KVCache(CONFIG, num_slots=1, max_seq_len=8)
    with pytest.raises(RequestError):
        cache.view([0], torch.tensor([[8]]))


def test_int8_cache_stores_levels_and_scales_and_returns_close_values():
    cache = KVCache(CONFIG, num_slots=2, max_seq_len=8, dtype=torch.int8)
    assert cache.keys[0].dtype == torch.int8
    per_token = 2 * CONFIG.num_layers * CONFIG.num_kv_heads * (CONFIG.head_dim + 4)
    assert cache.bytes_per_token == per_token and cache.nbytes == per_token * 2 * 8
    positions = torch.arange(5)[None]
    k = torch.randn(1, CONFIG.num_kv_heads, 5, CONFIG.head_dim)
    v = torch.randn_like(k) * 10
    keys, values = cache.view([1], positions).update_and_fetch(1, k, v)
    assert keys.dtype == k.dtype and keys.shape == k.shape
    # Error at most half a step of each token's own scale.
    assert ((keys - k).abs() <= k.abs().amax(-1, keepdim=True) / 127 / 2 + 1e-6).all()
    assert ((values - v).abs() <= v.abs().amax(-1, keepdim=True) / 127 / 2 + 1e-5).all()
    assert cache.keys[1][0].abs().sum() == 0


def test_generation_with_an_int8_cache_follows_the_float_cache(tmp_path):
    from conftest import save_tiny_model
    from lmforge.loading import load_checkpoint
    from lmforge.models.transformer import Transformer

    save_tiny_model(tmp_path, "llama")
    checkpoint = load_checkpoint(tmp_path)
    model = Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors)
    tokens = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    outs = {}
    for dtype in (torch.float32, torch.int8):
        cache = KVCache(checkpoint.config, 1, 32, dtype)
        with torch.no_grad():
            steps = [model(tokens[:, :8], torch.arange(8)[None], cache.view([0], torch.arange(8)[None]))]
            for i in range(8, 24):
                pos = torch.tensor([[i]])
                steps.append(model(tokens[:, i:i + 1], pos, cache.view([0], pos)))
        outs[dtype] = torch.cat(steps, dim=1)
    assert (outs[torch.int8].argmax(-1) == outs[torch.float32].argmax(-1)).float().mean() > 0.95
    assert (outs[torch.int8] - outs[torch.float32]).abs().max() < 0.05 * outs[torch.float32].abs().max()
