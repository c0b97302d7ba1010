"""The ONNX Runtime decoder behind the engine: slot runs, cache bindings, clear errors."""

import numpy as np
import onnx
import pytest
import torch
from conftest import save_tiny_model
from onnx import TensorProto, helper

from lmforge.errors import ModelError, RequestError
from lmforge.evaluate import evaluate
from lmforge.kv_cache import KVCache
from lmforge.loading import load_checkpoint
from lmforge.models.transformer import Transformer
from lmforge.onnx.export import export_onnx
from lmforge.onnx.runtime import OnnxDecoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-onnx")
    save_tiny_model(root / "hf", "llama")
    checkpoint = load_checkpoint(root / "hf")
    folder = export_onnx(root / "hf", root / "onnx", show_progress=False)
    return (OnnxDecoder(folder / "model.onnx", checkpoint.config),
            Transformer.from_hf_tensors(checkpoint.config, checkpoint.tensors))


def test_slot_runs_and_blocks(tiny):
    config = tiny[1].config
    cache = KVCache(config, 8, 16)

    def runs(slots):
        return cache.view(slots, torch.zeros(len(slots), 1, dtype=torch.long)).slot_runs()

    assert runs([0, 1, 2]) == [(0, 3, 0)]
    assert runs([0, 2, 3, 7]) == [(0, 1, 0), (1, 2, 2), (3, 1, 7)]
    assert runs([4]) == [(0, 1, 4)]
    keys, values = cache.slot_block(1, 2, 3)
    assert keys.shape == (3, config.num_kv_heads, 16, config.head_dim)
    keys[0, 0, 0, 0] = 5.0  # a view: the runtime writes the cache itself
    assert cache.keys[1][2, 0, 0, 0] == 5.0 and values.data_ptr() == cache.values[1][2].data_ptr()


def test_decoding_slots_with_gaps_matches_pytorch(tiny):
    decoder, reference = tiny
    tokens = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(0))
    caches = [KVCache(reference.config, 6, 16) for _ in range(2)]
    slots = [0, 2, 3]  # two runs of consecutive slots
    results = []
    for model, cache in zip((reference, decoder), caches):
        for row, slot in enumerate(slots):
            pos = torch.arange(9)[None]
            model(tokens[row:row + 1, :9], pos, cache.view([slot], pos))
        pos = torch.full((3, 1), 9)
        with torch.no_grad():
            results.append(model(tokens[:, 9:], pos, cache.view(slots, pos)))
    assert (results[0] - results[1]).abs().max() < 1e-4
    for layer in range(reference.config.num_layers):  # ONNX Runtime wrote the same keys into the same places
        assert (caches[0].keys[layer] - caches[1].keys[layer]).abs().max() < 1e-4


def test_a_new_cache_gets_new_bindings(tiny):
    """Bindings point into cache buffers; a cache made later must never reuse a dead one's."""
    decoder, reference = tiny
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(6)[None]
    with torch.no_grad():
        expected = reference(tokens, pos)
    for _ in range(5):
        cache = KVCache(reference.config, 2, 8)
        assert (decoder(tokens, pos, cache.view([0], pos)) - expected).abs().max() < 1e-4
        del cache


def test_perplexity_without_a_cache_matches_pytorch(tiny):
    decoder, reference = tiny
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    ours = evaluate(decoder, ids, ctx=64, stride=32)
    theirs = evaluate(reference, ids, ctx=64, stride=32)
    assert abs(ours.perplexity - theirs.perplexity) < 1e-3 * theirs.perplexity


def test_bad_requests_and_files_give_clear_errors(tiny, tmp_path):
    decoder, reference = tiny
    int8_cache = KVCache(reference.config, 1, 8, torch.int8)
    pos = torch.arange(3)[None]
    with pytest.raises(RequestError, match="float32"):
        decoder(torch.tensor([[1, 2, 3]]), pos, int8_cache.view([0], pos))
    with pytest.raises(RequestError, match="from 0"):
        decoder(torch.tensor([[1, 2]]), torch.tensor([[3, 4]]))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ModelError, match="not a decoder"):
        OnnxDecoder(tmp_path / "relu.onnx", reference.config)
    (tmp_path / "junk.onnx").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match="cannot load"):
        OnnxDecoder(tmp_path / "junk.onnx", reference.config)


def test_both_backends_are_decoders(tiny):
    from lmforge.decoder import Decoder

    onnx_decoder, transformer = tiny
    assert isinstance(onnx_decoder, Decoder) and isinstance(transformer, Decoder)
    assert onnx_decoder.config == transformer.config and onnx_decoder.dtype == transformer.dtype == torch.float32
