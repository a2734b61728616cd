"""FuseConvActivationPass: ORT FusedConv for each activation, the patterns left alone, the TensorRT target."""

import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ops, ort_run, tensor_info, to_ir
from deploykit.passes import FuseConvActivationPass


def _conv_act(act, extra_reader=False, **act_attrs):
    rng = np.random.default_rng(0)
    inits = [("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
             ("b", rng.standard_normal(8).astype(np.float32))]
    act_inputs = ["c"]
    if act == "Clip":
        inits += [("lo", np.array(-0.5, np.float32)), ("hi", np.array(1.5, np.float32))]
        act_inputs += ["lo", "hi"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(act, act_inputs, ["y"], name="act", **act_attrs)]
    outputs = [tensor_info("y", [1, 8, 6, 6])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["c"], ["z"], name="neg"))
        outputs.append(tensor_info("z", [1, 8, 6, 6]))
    return make_model(nodes, [tensor_info("x", [1, 3, 6, 6])], outputs, inits)


@pytest.mark.parametrize("act,attrs", [("Relu", {}), ("Clip", {}), ("LeakyRelu", {"alpha": 0.2}),
                                       ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_fuses_each_activation_exactly(act, attrs):
    proto = _conv_act(act, **attrs)
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    model = to_ir(proto)
    assert FuseConvActivationPass("ort")(model).modified
    assert ops(model) == ["FusedConv"]
    # Run with ORT's own fusions off, so the FusedConv we wrote is what computes.
    got = ort_run(model, {"x": x}, disable_optimizations=True)[0]
    np.testing.assert_allclose(got, ort_run(proto, {"x": x}, disable_optimizations=True)[0], rtol=1e-5, atol=1e-6)


def test_leaves_conv_whose_output_has_another_reader():
    model = to_ir(_conv_act("Relu", extra_reader=True))
    p = FuseConvActivationPass("ort")
    assert not p(model).modified
    assert ops(model) == ["Conv", "Relu", "Neg"]
    assert any("other readers" in n for n in p.notes)


def test_tensorrt_target_leaves_the_pattern_and_says_so():
    model = to_ir(_conv_act("Relu"))
    p = FuseConvActivationPass("tensorrt")
    assert not p(model).modified
    assert ops(model) == ["Conv", "Relu"]
    assert any("TensorRT fuses them itself" in n for n in p.notes)


def test_residual_add_becomes_input_z():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="r1"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c"], name="c2", pads=[1] * 4),
             helper.make_node("Add", ["c", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="r2")]
    inits = [("w1", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)), ("b1", rng.standard_normal(4).astype(np.float32)),
             ("w2", rng.standard_normal((4, 4, 3, 3)).astype(np.float32)), ("b2", rng.standard_normal(4).astype(np.float32))]
    proto = make_model(nodes, [tensor_info("x", [1, 4, 5, 5])], [tensor_info("y", [1, 4, 5, 5])], inits)
    model = to_ir(proto)
    import onnx_ir.passes.common as common

    common.ShapeInferencePass()(model)
    p = FuseConvActivationPass("ort")
    assert p(model).modified
    assert ops(model) == ["FusedConv", "FusedConv"]
    assert len(list(model.graph)[1].inputs) == 4
    assert any("residual Add as input Z" in n for n in p.notes)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x}, disable_optimizations=True)[0],
                               ort_run(proto, {"x": x}, disable_optimizations=True)[0], rtol=1e-5, atol=1e-5)


def test_add_of_two_convs_is_fused_once():
    """ResNet's downsampling block: Add(conv_a, conv_b) -> Relu. One conv takes the Add, the other feeds Z."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="cb"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    inits = [(n, rng.standard_normal(s).astype(np.float32)) for n, s in
             [("wa", (4, 3, 1, 1)), ("ba", (4,)), ("wb", (4, 3, 1, 1)), ("bb", (4,))]]
    proto = make_model(nodes, [tensor_info("x", [1, 3, 4, 4])], [tensor_info("y", [1, 4, 4, 4])], inits)
    model = to_ir(proto)
    import onnx_ir.passes.common as common

    common.ShapeInferencePass()(model)
    assert FuseConvActivationPass("ort")(model).modified
    assert sorted(ops(model)) == ["Conv", "FusedConv"]
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x}, disable_optimizations=True)[0],
                               ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_random_shapes_fuse_exactly(seed):
    rng = np.random.default_rng(seed)
    cin, cout, k = int(rng.integers(1, 9)), int(rng.integers(1, 17)), int(rng.choice([1, 3, 5]))
    stride, spatial = int(rng.choice([1, 2])), int(rng.integers(k + 1, 14))
    act = str(rng.choice(["Relu", "LeakyRelu", "Sigmoid"]))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", strides=[stride] * 2, pads=[k // 2] * 4),
             helper.make_node(act, ["c"], ["y"], name="act")]
    out = (spatial + 2 * (k // 2) - k) // stride + 1
    proto = make_model(nodes, [tensor_info("x", [2, cin, spatial, spatial])], [tensor_info("y", [2, cout, out, out])],
                       [("w", rng.standard_normal((cout, cin, k, k)).astype(np.float32)),
                        ("b", rng.standard_normal(cout).astype(np.float32))])
    model = to_ir(proto)
    assert FuseConvActivationPass("ort")(model).modified and ops(model) == ["FusedConv"]
    x = rng.standard_normal((2, cin, spatial, spatial)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x}, disable_optimizations=True)[0],
                               ort_run(proto, {"x": x}, disable_optimizations=True)[0], rtol=1e-5, atol=1e-5)
