"""Bias correction (--int8-bias-correction): the systematic shift int8 weights put on each output channel,
measured against the float model in ONNX Runtime with and without the correction."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.optimize import optimize_model


def depthwise_chain(path, seed=0):
    """Conv 3->16, ReLU, depthwise 3x3 (nine weights per channel: the largest rounding shifts), ReLU, Conv 1x1."""
    rng = np.random.default_rng(seed)
    # Weights of uneven size in each channel, as trained depthwise layers have: one large tap sets the scale
    # and the small ones round coarsely.
    dw = rng.normal(0, 0.05, (16, 1, 3, 3)).astype(np.float32)
    dw[:, 0, 1, 1] = rng.choice([-1.0, 1.0], 16) * rng.uniform(1.5, 3.0, 16)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)), ("b1", np.full(16, 0.5, np.float32)),
        ("w2", dw), ("b2", np.zeros(16, np.float32)),
        ("w3", rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32)), ("b3", np.zeros(8, np.float32)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16, name="depthwise"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="pointwise")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def mean_shift(model, reference, x):
    """Mean over channels of |mean over samples and pixels of (model - reference)|: the systematic error."""
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa
    return float(np.abs((run(model) - run(reference)).mean(axis=(0, 2, 3))).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_bias_correction_reduces_the_systematic_error(tmp_path, seed):
    source = tmp_path / "chain.onnx"
    depthwise_chain(source, seed)
    rng = np.random.default_rng(10 + seed)
    calibration = rng.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)  # image-like: positive means
    held_out = rng.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "cal.npy", calibration)
    plain = optimize_model(source, tmp_path / "plain.onnx", int8=True, calibration=str(tmp_path / "cal.npy"),
                           fold=False, fuse=False)
    corrected = optimize_model(source, tmp_path / "corrected.onnx", int8=True, calibration=str(tmp_path / "cal.npy"),
                               fold=False, fuse=False, int8_bias_correction=True)
    notes = " ".join(corrected.passes[-1].notes)
    assert "bias correction" in notes and "bias correction" not in " ".join(plain.passes[-1].notes)
    before = mean_shift(tmp_path / "plain.onnx", source, held_out)
    after = mean_shift(tmp_path / "corrected.onnx", source, held_out)
    assert after < 0.3 * before, (before, after)  # measured: 5-20x smaller on three seeds
    # Only biases moved: the int8 weights, scales and graph are the plain model's.
    a, b = onnx.load(str(tmp_path / "plain.onnx")), onnx.load(str(tmp_path / "corrected.onnx"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    changed = {i.name for i, j in zip(a.graph.initializer, b.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))}
    assert changed and all(numpy_helper.to_array(next(i for i in b.graph.initializer if i.name == n)).dtype == np.int32
                           for n in changed)
