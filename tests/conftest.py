from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.cli import main

DATA = Path(__file__).parent / "data"


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run the deploykit command in-process through its real entry point (main)."""

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def convnext(tmp_path_factory):
    """A ConvNeXt-style block net (tests/models/blocks.py) with 16 calibration and 48 validation inputs:
    (model path, calibration .npy, validation .npy)."""
    from deploykit import export

    root = tmp_path_factory.mktemp("convnext")
    path = root / "convnext.onnx"
    export(f"{Path(__file__).parent / 'models' / 'blocks.py'}:convnext_like", path, input_shape=(1, 3, 32, 32))
    rng = np.random.default_rng(0)
    calibration = root / "calibration.npy"
    np.save(calibration, rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    validation = root / "validation.npy"
    np.save(validation, rng.standard_normal((48, 3, 32, 32)).astype(np.float32))
    return path, calibration, validation


@pytest.fixture
def openvino_f32():
    """first_output(model, x): the model's first output in OpenVINO's own API, float layers in f32, the
    reference a judge in OpenVINO is checked against; skipped where OpenVINO is not installed."""
    ov = pytest.importorskip("openvino")

    def first_output(model, x):
        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.asarray(compiled({compiled.inputs[0]: x})[compiled.outputs[0]])

    return first_output


@pytest.fixture(scope="session")
def exported(export_dir):
    """Export a zoo model once per session: exported(name, shape=None) -> (path, ExportResult)."""
    from deploykit import export

    cache = {}

    def get(name, shape=None):
        key = (name, tuple(shape) if shape else None)
        if key not in cache:
            suffix = "x".join(map(str, shape)) if shape else "default"
            path = export_dir / f"{name}_{suffix}.onnx"
            cache[key] = (path, export(name, path, input_shape=shape))
        return cache[key]

    return get


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    """A hand-built ONNX model. IR version 10: onnx 1.23 writes 14 by default, which ORT 1.31 rejects."""
    graph = helper.make_graph(nodes, "test", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(a), name) for name, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def tensor_info(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.fixture
def save(tmp_path):
    def _save(model, name="model.onnx"):
        path = tmp_path / name
        onnx.save_model(model, str(path))
        return path

    return _save


sys.path.insert(0, str(Path(__file__).parent))


def ort_run(model, feeds, disable_optimizations=False):
    """Run a ModelProto or onnx_ir Model in a fresh ONNX Runtime CPU session."""
    import onnx_ir as ir
    import onnxruntime as ort

    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    opts = ort.SessionOptions()
    if disable_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def to_ir(proto):
    import onnx_ir as ir

    return ir.from_proto(proto)


def ops(model):
    return [n.op_type for n in model.graph]
