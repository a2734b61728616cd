"""Cross-layer equalisation (--int8-equalize): exact in float, measured against the float model in ONNX Runtime,
and the int8 error it takes away on a chain whose channels differ in range, as BN-folded trained layers do."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.optimize import optimize_model
from deploykit.passes.int8_equalize import equalization_pairs, equalize


def uneven_chain(path, seed=0, middle="Relu"):
    """Conv 3->16 whose output channels span three decades of range, `middle`, depthwise 3x3, ReLU, Conv 1x1 ->
    8. The small channels share one per-tensor int8 range with the large ones and round to a few steps."""
    rng = np.random.default_rng(seed)
    gain = np.geomspace(0.01, 10.0, 16)[rng.permutation(16)]
    w1 = (rng.normal(0, 0.3, (16, 3, 3, 3)) * gain[:, None, None, None]).astype(np.float32)
    b1 = (0.2 * gain).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("b1", b1), ("w2", rng.normal(0, 0.5, (16, 1, 3, 3)).astype(np.float32)),
        ("b2", np.full(16, 0.1, np.float32)),
        ("w3", (rng.normal(0, 0.3, (8, 16, 1, 1)) / gain[None, :, None, None]).astype(np.float32)),
        ("b3", np.zeros(8, np.float32)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             (helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="act1") if middle == "Clip"
              else helper.make_node(middle, ["c1"], ["r1"], name="act1")),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16, name="depthwise"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="pointwise")]
    if middle == "Clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def relative_rms(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def test_equalisation_leaves_the_float_model_exact_and_balances_the_channels(tmp_path):
    source = tmp_path / "chain.onnx"
    uneven_chain(source)
    x = np.random.default_rng(3).uniform(0, 1, (8, 3, 16, 16)).astype(np.float32)
    proto = onnx.load(str(source))
    assert [(a.name, b.name) for a, b, _ in equalization_pairs(proto)] == [("conv1", "depthwise"),
                                                                          ("depthwise", "pointwise")]
    spread = equalize(proto, x)
    assert relative_rms(run(proto, x), run(source, x)) < 1e-5
    # Ranges spanning three decades: the spread of the first pair's channels must shrink a lot.
    assert spread["depthwise"] < 0.1, spread
    changed = {i.name for i, j in zip(onnx.load(str(source)).graph.initializer, proto.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))}
    assert changed == {"w1", "b1", "w2", "b2", "w3"}


def test_pairs_across_relu6_are_left_alone(tmp_path):
    """Clip(0, 6) is not scale-equivariant (its bound does not scale): only the depthwise -> pointwise pair is taken."""
    source = tmp_path / "chain.onnx"
    uneven_chain(source, middle="Clip")
    assert [(a.name, b.name) for a, b, _ in equalization_pairs(onnx.load(str(source)))] == [("depthwise", "pointwise")]


@pytest.mark.parametrize("seed", [0, 1])
def test_equalisation_reduces_the_int8_error(tmp_path, seed):
    source = tmp_path / "chain.onnx"
    uneven_chain(source, seed)
    rng = np.random.default_rng(10 + seed)
    np.save(tmp_path / "cal.npy", rng.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32))
    held_out = rng.uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    common = dict(int8=True, calibration=str(tmp_path / "cal.npy"), fold=False, fuse=False)
    plain = optimize_model(source, tmp_path / "plain.onnx", **common)
    equalized = optimize_model(source, tmp_path / "equalized.onnx", int8_equalize=True, **common)
    assert "cross-layer equalisation: 2" in " ".join(equalized.passes[-1].notes)
    assert "cross-layer" not in " ".join(plain.passes[-1].notes)
    reference = run(source, held_out)
    before = relative_rms(run(tmp_path / "plain.onnx", held_out), reference)
    after = relative_rms(run(tmp_path / "equalized.onnx", held_out), reference)
    assert after < 0.2 * before, (before, after)  # measured: 10-50x smaller on four seeds
