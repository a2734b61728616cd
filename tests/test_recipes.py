"""deploykit.recipes: the fast recipe's int8 searched again in OpenVINO, judged here with OpenVINO's own API."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deploykit import Engine
from deploykit.options import OptimizeOptions


def _with_last_layer_negated(source: Path, target: Path) -> Path:
    """The model with its classifier's weights negated: a candidate that cannot hold any budget in any engine."""
    model = onnx.load(str(source))
    gemm = next(n for n in reversed(model.graph.node) if n.op_type in ("Gemm", "MatMul"))
    weights = next(i for i in model.graph.initializer if i.name in gemm.input)
    weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
    onnx.save(model, str(target))
    return target


def test_a_bottleneck_openvino_refuses_leaves_int8_searched_there_without_it(convnext, openvino_f32, tmp_path):
    """ORT's int8 does not hold in OpenVINO, and the bottleneck it was searched with cannot be built: int8 is
    still searched in OpenVINO without the bottleneck, the refusal is said, and the result holds the budget in
    OpenVINO (measured with OpenVINO's own API against the input in ONNX Runtime)."""
    from deploykit.recipes import int8_judged_in_openvino, recipe_judge

    path, calibration, validation = convnext
    options = OptimizeOptions(calibration=str(calibration), validate=str(validation))
    judge = recipe_judge(path, options)
    not_holding = _with_last_layer_negated(path, tmp_path / "not_holding.onnx")
    found, why = int8_judged_in_openvino(path, tmp_path, not_holding, judge, options, "time=0.01", 1.0)
    assert found is not None, why
    assert why.startswith("int8 judged in OpenVINO with bottleneck time=0.01:"), why
    x = np.load(validation)
    agreement = np.mean(openvino_f32(found, x).argmax(1) == Engine(path)(x).argmax(1))
    assert agreement >= 0.99
    convs = [len([n for n in onnx.load(str(m)).graph.node if n.op_type == "Conv"]) for m in (path, found)]
    assert convs[0] == convs[1]  # no bottleneck: a factorised layer is two convolutions
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(found)).graph.node}


def test_an_int8_model_that_holds_in_openvino_is_not_searched_again(convnext, tmp_path):
    pytest.importorskip("openvino")
    from deploykit.recipes import int8_judged_in_openvino, recipe_judge

    path, calibration, validation = convnext
    options = OptimizeOptions(calibration=str(calibration), validate=str(validation))
    # The float input itself holds any budget in OpenVINO f32: nothing to search, nothing written.
    assert int8_judged_in_openvino(path, tmp_path, path, recipe_judge(path, options), options, None, 1.0) \
        == (None, None)
    assert not (tmp_path / "int8_openvino.onnx").exists()
