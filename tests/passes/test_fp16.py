"""Float16Pass: IO types, digits accuracy within 0.3 points, and float32 kept where float16 would overflow."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from conftest import make_model, ort_run, tensor_info
from deploykit.optimize import optimize_model, run_pipeline
from deploykit.passes.fp16 import Float16Pass


def test_digits_in_fp16_keeps_accuracy_and_float32_io(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "fp16.onnx"
    report = optimize_model(path, out, fp16=True, validate="digits")
    p = report.passes[-1]
    assert p.name == "fp16"
    assert p.accuracy_before - p.accuracy_after <= 0.003
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)


def test_fp16_io_option(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "fp16io.onnx"
    optimize_model(path, out, fp16=True, fp16_io=True)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float16)
    assert ort_run(model, {"input": x})[0].dtype == np.float16


def test_overflowing_nodes_stay_float32(tmp_path):
    """A layer whose activations pass 65504 on real inputs, and a weight beyond fp16's range, stay float32."""
    big = np.full((4, 3, 1, 1), 3000.0, np.float32)  # 3 channels x 3000 x inputs of ~10 -> ~90,000
    huge = np.array([1e6], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="loud_conv"),
             helper.make_node("Mul", ["a", "tiny"], ["b"], name="scale_down"),
             helper.make_node("Div", ["b", "huge"], ["c"], name="huge_div"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    proto = make_model(nodes, [tensor_info("x", [1, 3, 4, 4])], [tensor_info("y", [1, 4, 4, 4])],
                       [("w", big), ("tiny", np.array([1e-3], np.float32)), ("huge", huge)])
    path = tmp_path / "loud.onnx"
    onnx.save_model(proto, str(path))
    sample = np.full((2, 3, 4, 4), 10.0, np.float32)
    report = run_pipeline(path, [Float16Pass(sample=sample)], tmp_path / "out.onnx", input_shape=(1, 3, 4, 4))
    notes = " ".join(report.passes[0].notes)
    assert "kept loud_conv in float32" in notes and "kept huge_div in float32" in notes
    out = onnx.load(str(tmp_path / "out.onnx"))
    x = np.full((1, 3, 4, 4), 10.0, np.float32)
    got = ort_run(out, {"x": x})[0]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ort_run(proto, {"x": x})[0], rtol=1e-2)
