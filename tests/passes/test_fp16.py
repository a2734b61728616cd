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


def _conv_head_model():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "g"], ["y"])]
    return make_model(nodes, [tensor_info("x", ["N", 3, 8, 8])], [tensor_info("y", ["N", 10])],
                      [("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2),
                       ("g", rng.standard_normal((512, 10)).astype(np.float32) * 0.05)])


def test_an_already_quantized_model_keeps_its_quantized_ops_in_float32(tmp_path):
    # ORT's own dynamic quantization: DynamicQuantizeLinear and MatMulInteger take float32 only.
    from onnxruntime.quantization import quantize_dynamic

    source = tmp_path / "float.onnx"
    onnx.save(_conv_head_model(), str(source))
    quantized = tmp_path / "quantized.onnx"
    quantize_dynamic(str(source), str(quantized))
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(quantized)).graph.node)
    out = tmp_path / "fp16.onnx"
    report = optimize_model(quantized, out, fp16=True)
    notes = " ".join(report.passes[-1].notes)
    assert "DynamicQuantizeLinear has no float16 form" in notes
    x = np.random.default_rng(6).standard_normal((4, 3, 8, 8)).astype(np.float32)
    expected = ort_run(onnx.load(str(quantized)), {"x": x})[0]
    got = ort_run(onnx.load(str(out)), {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=0.02 * np.abs(expected).max())


def test_shape_arithmetic_stays_float32_so_range_still_loads(tmp_path):
    """A YOLO-style grid: Range over a float computed from the input's width. Range has no float16 kernel, and
    the grid must stay exact; the data path still goes to float16."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "three"], ["width"], axis=0),
             helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["width_f", "stride"], ["limit"]),
             helper.make_node("Range", ["zero", "limit", "stride"], ["grid"]),
             helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Add", ["c", "grid"], ["y"])]
    w = np.random.default_rng(7).standard_normal((2, 3, 1, 1)).astype(np.float32)
    model = make_model(nodes, [tensor_info("x", [1, 3, 4, "W"])],
                       [tensor_info("y", [1, 2, 4, "W"]), tensor_info("grid", ["W"])],
                       [("three", np.array(3, np.int64)), ("stride", np.array(8.0, np.float32)),
                        ("zero", np.array(0.0, np.float32)), ("w", w)])
    source = tmp_path / "grid.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "grid16.onnx"
    report = optimize_model(source, out, fp16=True, input_shape=(1, 3, 4, 600))
    notes = " ".join(report.passes[-1].notes)
    assert "Range has no float16 form" in notes and "computes shapes or constants" in notes
    written = onnx.load(str(out))
    assert any(n.op_type == "Conv" for n in written.graph.node)
    assert [t.data_type for t in written.graph.initializer if t.name == "w"] == [TensorProto.FLOAT16]
    x = np.random.default_rng(8).standard_normal((1, 3, 4, 600)).astype(np.float32)
    y, grid = ort_run(written, {"x": x})
    # The grid reaches 4792, where float16 spaces values 4 apart: kept in float32, every step is exact.
    np.testing.assert_array_equal(grid, np.arange(0, 600 * 8, 8, dtype=np.float32))
    np.testing.assert_allclose(y, ort_run(model, {"x": x})[0], rtol=2e-3, atol=4.0)


def test_control_flow_and_what_its_subgraphs_read_stay_float32(tmp_path):
    """An If whose branches read the conv's output by name (a captured value): converting that output to float16
    made the branches' declared float32 outputs a type error ORT refused to load."""
    w = np.random.default_rng(9).standard_normal((8, 3, 3, 3)).astype(np.float32)
    then = helper.make_graph([helper.make_node("Relu", ["c"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    otherwise = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=otherwise)]
    model = make_model(nodes, [tensor_info("x", ["N", 3, 8, 8]), tensor_info("flag", [], TensorProto.BOOL)],
                       [tensor_info("y", ["N", 8, 8, 8])], [("w", w)])
    source = tmp_path / "if.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "if16.onnx"
    report = optimize_model(source, out, fp16=True, input_shape={"x": (2, 3, 8, 8), "flag": ()})
    notes = " ".join(report.passes[-1].notes)
    assert "If has subgraphs" in notes and "read inside" in notes
    x = np.random.default_rng(10).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        np.testing.assert_allclose(ort_run(onnx.load(str(out)), feeds)[0], ort_run(model, feeds)[0], rtol=1e-5,
                                   atol=1e-5)
