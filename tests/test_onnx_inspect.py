"""inspect_onnx reads the graph without its weights and counts what it holds."""

import onnx
import pytest
from conftest import save_tiny_model
from onnx import TensorProto, helper

from lmforge.errors import ModelError
from lmforge.onnx.export import export_onnx
from lmforge.onnx.inspect import inspect_onnx


def test_report_on_an_exported_decoder(tmp_path):
    save_tiny_model(tmp_path / "hf", "llama", tie_word_embeddings=True)
    folder = export_onnx(tmp_path / "hf", tmp_path / "onnx", precision="int4", show_progress=False)
    report = inspect_onnx(folder / "model.onnx")
    assert report.is_decoder
    assert report.operators["com.microsoft.GroupQueryAttention"] == 2
    assert report.operators["com.microsoft.MatMulNBits"] == 9
    inputs = {t.name: t for t in report.inputs}
    assert inputs["input_ids"].dtype == "int64" and inputs["input_ids"].shape == ["batch_size", "sequence_length"]
    assert inputs["past_key_values.1.value"].shape == ["batch_size", 2, "past_sequence_length", 16]
    assert [t.name for t in report.outputs][:3] == ["logits", "present.0.key", "present.0.value"]
    # Every initializer byte is accounted for: the external file holds all but the tiny inline ones.
    model = onnx.load(str(folder / "model.onnx"))
    total = sum(t.raw_data.__len__() for t in model.graph.initializer)
    assert sum(report.initializer_bytes.values()) == total
    assert report.external_data_bytes == (folder / "model.onnx.data").stat().st_size <= total


def test_a_graph_that_is_not_a_decoder_and_a_file_that_is_not_onnx(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "n"])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    report = inspect_onnx(tmp_path / "relu.onnx")
    assert not report.is_decoder and report.operators == {"Relu": 1} and report.inputs[0].shape == [2, "n"]
    (tmp_path / "text.onnx").write_text("hello, not protobuf")
    with pytest.raises(ModelError, match="not an ONNX model"):
        inspect_onnx(tmp_path / "text.onnx")
    with pytest.raises(ModelError, match="no such file"):
        inspect_onnx(tmp_path / "missing.onnx")
