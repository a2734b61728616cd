"""FoldBatchNormPass: structural checks on hand-built graphs and numerical equality in ORT."""

import numpy as np
import pytest
import torch
from onnx import helper

from conftest import make_model, ops, ort_run, tensor_info, to_ir
from deploykit.passes import FoldBatchNormPass


def _bn_inits(rng, c, prefix="bn"):
    return [(f"{prefix}_s", rng.uniform(0.5, 2, c).astype(np.float32)),
            (f"{prefix}_b", rng.standard_normal(c).astype(np.float32)),
            (f"{prefix}_m", rng.standard_normal(c).astype(np.float32)),
            (f"{prefix}_v", rng.uniform(0.1, 3, c).astype(np.float32))]


def _bn(x, y, prefix="bn", eps=1e-5):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], name=prefix, epsilon=eps)


def _conv_bn(rng, cin, cout, k, spatial, bias=True, extra_reader=False):
    inits = [("w", rng.standard_normal((cout, cin, k, k)).astype(np.float32))]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(("b", rng.standard_normal(cout).astype(np.float32)))
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[k // 2] * 4), _bn("c", "y")]
    out = spatial
    outputs = [tensor_info("y", [2, cout, out, out])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["c"], ["side"], name="side"))
        outputs.append(tensor_info("side", [2, cout, out, out]))
    return make_model(nodes, [tensor_info("x", [2, cin, spatial, spatial])], outputs, inits + _bn_inits(rng, cout))


@pytest.mark.parametrize("seed", range(6))
def test_conv_bn_fold_random_shapes(seed):
    rng = np.random.default_rng(seed)
    cin, cout, k, spatial = int(rng.integers(1, 9)), int(rng.integers(1, 17)), int(rng.choice([1, 3, 5])), int(rng.integers(5, 12))
    proto = _conv_bn(rng, cin, cout, k, spatial, bias=bool(seed % 2))
    x = rng.standard_normal((2, cin, spatial, spatial)).astype(np.float32)
    model = to_ir(proto)
    result = FoldBatchNormPass()(model)
    assert result.modified
    assert ops(model) == ["Conv"]
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_leaves_conv_with_two_readers():
    proto = _conv_bn(np.random.default_rng(0), 3, 4, 3, 6, extra_reader=True)
    model = to_ir(proto)
    p = FoldBatchNormPass()
    assert not p(model).modified
    assert "BatchNormalization" in ops(model)
    assert any("other readers" in n for n in p.notes)


def test_leaves_bn_whose_parameters_are_not_constant():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "bn_b", "bn_m", "bn_v"], ["y"], name="bn")]
    inits = [("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32))] + _bn_inits(rng, 4)[1:]
    proto = make_model(nodes, [tensor_info("x", [1, 3, 4, 4]), tensor_info("scale", [4])],
                       [tensor_info("y", [1, 4, 4, 4])], inits)
    model = to_ir(proto)
    p = FoldBatchNormPass()
    assert not p(model).modified
    assert any("not a constant" in n for n in p.notes)


def test_leaves_bn_on_a_graph_input():
    rng = np.random.default_rng(2)
    proto = make_model([_bn("x", "y")], [tensor_info("x", [1, 4, 3, 3])], [tensor_info("y", [1, 4, 3, 3])],
                       _bn_inits(rng, 4))
    model = to_ir(proto)
    assert not FoldBatchNormPass()(model).modified


def _assert_folds_exactly(proto, x, expected_ops, tol):
    """The BatchNorm disappears into the layer and ONNX Runtime computes the same outputs."""
    model = to_ir(proto)
    assert FoldBatchNormPass()(model).modified and ops(model) == expected_ops
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn(trans_b):
    rng = np.random.default_rng(trans_b)
    w = rng.standard_normal((6, 5) if trans_b else (5, 6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm", transB=trans_b), _bn("g", "y")]
    proto = make_model(nodes, [tensor_info("x", [3, 5])], [tensor_info("y", [3, 6])],
                       [("w", w), ("b", rng.standard_normal(6).astype(np.float32))] + _bn_inits(rng, 6))
    _assert_folds_exactly(proto, rng.standard_normal((3, 5)).astype(np.float32), ["Gemm"], 1e-5)


def test_matmul_bn_becomes_gemm():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["g"], name="mm"), _bn("g", "y")]
    proto = make_model(nodes, [tensor_info("x", [3, 5])], [tensor_info("y", [3, 6])],
                       [("w", rng.standard_normal((5, 6)).astype(np.float32))] + _bn_inits(rng, 6))
    _assert_folds_exactly(proto, rng.standard_normal((3, 5)).astype(np.float32), ["Gemm"], 1e-5)


def test_conv_transpose_bn():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="deconv", strides=[2, 2]), _bn("c", "y")]
    proto = make_model(nodes, [tensor_info("x", [1, 3, 4, 4])], [tensor_info("y", [1, 5, 9, 9])],
                       [("w", rng.standard_normal((3, 5, 3, 3)).astype(np.float32))] + _bn_inits(rng, 5))
    _assert_folds_exactly(proto, rng.standard_normal((1, 3, 4, 4)).astype(np.float32), ["ConvTranspose"], 1e-4)


def test_fold_on_a_training_mode_export_matches_pytorch(tmp_path):
    """An export that keeps BatchNorm (training=PRESERVE) folds to the same numbers PyTorch computes."""
    import onnx

    from deploykit.zoo import load_zoo_model

    net = load_zoo_model("digits").module
    x = torch.randn(4, 1, 8, 8)
    path = tmp_path / "bn.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, input_names=["input"])
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node].count("BatchNormalization") == 3
    model = to_ir(proto)
    FoldBatchNormPass()(model)
    assert "BatchNormalization" not in ops(model)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(ort_run(model, {"input": x.numpy()})[0], want, rtol=1e-4, atol=1e-4)


def test_bn_after_add_of_conv_transpose_and_conv_folds_into_both():
    """BN(ConvTranspose(a) + Conv(b)): both layers absorb the scale, one bias the shift; outputs unchanged."""
    import onnx
    from onnx import helper

    from conftest import make_model, ort_run, tensor_info, to_ir
    from deploykit.passes import FoldBatchNormPass

    rng = np.random.default_rng(3)
    inits = [("wt", rng.standard_normal((4, 6, 2, 2)).astype(np.float32)),
             ("bt", rng.standard_normal(6).astype(np.float32)),
             ("wc", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
             ("gamma", rng.uniform(0.5, 2, 6).astype(np.float32)), ("beta", rng.standard_normal(6).astype(np.float32)),
             ("mean", rng.standard_normal(6).astype(np.float32)), ("var", rng.uniform(0.5, 2, 6).astype(np.float32))]
    nodes = [helper.make_node("ConvTranspose", ["a", "wt", "bt"], ["up"], strides=[2, 2]),
             helper.make_node("Conv", ["b", "wc"], ["lat"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["up", "lat"], ["sum"]),
             helper.make_node("BatchNormalization", ["sum", "gamma", "beta", "mean", "var"], ["y"])]
    model = make_model(nodes, [tensor_info("a", [1, 4, 5, 5]), tensor_info("b", [1, 3, 10, 10])],
                       [tensor_info("y", [1, 6, 10, 10])], inits)
    feeds = {"a": rng.standard_normal((1, 4, 5, 5)).astype(np.float32),
             "b": rng.standard_normal((1, 3, 10, 10)).astype(np.float32)}
    reference = ort_run(model, feeds)[0]
    ir_model = to_ir(model)
    assert FoldBatchNormPass()(ir_model).modified
    assert "BatchNormalization" not in [n.op_type for n in ir_model.graph]
    np.testing.assert_allclose(ort_run(ir_model, feeds)[0], reference, rtol=1e-4, atol=1e-5)
