"""QuantizeInt8Pass: target-specific activation types, int8 conv count, digits accuracy within 1 point."""

import numpy as np
import onnx
import pytest

from deploykit import UserInputError
from deploykit.optimize import optimize_model


def _node_types(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_ort_target_uses_uint8_activations_and_keeps_digits_accuracy(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "int8.onnx"
    report = optimize_model(path, out, int8=True, calibration="digits", validate="digits")
    q = report.passes[-1]
    assert q.name == "int8" and not q.exact
    assert q.accuracy_before - q.accuracy_after <= 0.01
    assert "3 of 3 convolution(s) run in int8" in " ".join(q.notes)
    model = onnx.load(str(out))
    activation_zero_points = [t for t in model.graph.initializer if t.name.endswith("zero_point") and len(t.dims) == 0]
    assert activation_zero_points and all(t.data_type == onnx.TensorProto.UINT8 for t in activation_zero_points)


def test_tensorrt_target_uses_symmetric_int8(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "int8_trt.onnx"
    report = optimize_model(path, out, int8=True, calibration="digits", target="tensorrt")
    assert "3 of 3 convolution(s) run in int8 (Conv between DequantizeLinear nodes)" in " ".join(report.passes[-1].notes)
    model = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    bias_inputs = {n.input[2] for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    data_zp, bias_zp = [], []
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            (bias_zp if n.output[0] in bias_inputs else data_zp).append(inits[n.input[2]])
    # Activations and weights: symmetric int8 (zero point 0). Biases are int32, as QDQ defines them.
    assert data_zp and all(z.dtype == np.int8 and not z.any() for z in data_zp)
    assert bias_zp and all(z.dtype == np.int32 for z in bias_zp)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(exported, tmp_path, method):
    path, _ = exported("digits")
    report = optimize_model(path, tmp_path / f"{method}.onnx", int8=True, calibration="digits",
                            calibration_method=method, validate="digits")
    assert report.passes[-1].accuracy_after >= report.passes[-1].accuracy_before - 0.01


def test_calibration_from_npy_and_errors(exported, tmp_path):
    path, _ = exported("digits")
    data = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "cal.npy", data)
    optimize_model(path, tmp_path / "q.onnx", int8=True, calibration=str(tmp_path / "cal.npy"))
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(UserInputError, match="calibration data for input .input. has samples of shape \\[3, 8, 8\\]"):
        optimize_model(path, tmp_path / "q2.onnx", int8=True, calibration=str(tmp_path / "wrong.npy"))
    with pytest.raises(UserInputError, match="does not exist"):
        optimize_model(path, tmp_path / "q3.onnx", int8=True, calibration=str(tmp_path / "missing"))
    assert not (tmp_path / "q2.onnx").exists()


def test_cli_int8_needs_calibration(cli, exported, tmp_path):
    path, _ = exported("digits")
    result = cli("optimize", path, "-o", tmp_path / "x.onnx", "--int8")
    assert result.code == 2 and "--int8 needs --calibration" in result.err


@pytest.mark.parametrize("seed", range(3))
def test_hand_built_conv_chain_quantizes_every_conv(tmp_path, seed):
    """Random small conv chains: every conv becomes QLinearConv in ORT and the output stays close."""
    from onnx import helper

    from conftest import make_model, ort_run, tensor_info

    rng = np.random.default_rng(seed)
    c0, c1, c2, s = int(rng.integers(1, 4)), int(rng.integers(4, 12)), int(rng.integers(4, 12)), int(rng.integers(6, 12))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"], name="r1"),
             helper.make_node("Conv", ["b", "w2", "b2"], ["y"], name="c2", pads=[1] * 4)]
    inits = [("w1", rng.standard_normal((c1, c0, 3, 3)).astype(np.float32) * 0.3),
             ("b1", rng.standard_normal(c1).astype(np.float32) * 0.1),
             ("w2", rng.standard_normal((c2, c1, 3, 3)).astype(np.float32) * 0.3),
             ("b2", rng.standard_normal(c2).astype(np.float32) * 0.1)]
    proto = make_model(nodes, [tensor_info("x", ["batch", c0, s, s])], [tensor_info("y", ["batch", c2, s, s])], inits)
    src = tmp_path / "chain.onnx"
    onnx.save_model(proto, str(src))
    calibration = rng.random((32, c0, s, s), dtype=np.float32)
    np.save(tmp_path / "cal.npy", calibration)
    report = optimize_model(src, tmp_path / "q.onnx", int8=True, calibration=str(tmp_path / "cal.npy"),
                            input_shape=(1, c0, s, s))
    assert "2 of 2 convolution(s) run in int8" in " ".join(report.passes[-1].notes)
    x = calibration[:4]
    want = ort_run(proto, {"x": x})[0]
    got = ort_run(onnx.load(str(tmp_path / "q.onnx")), {"x": x})[0]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_inspect_counts_quantized_weights_as_weights_not_activations(exported, tmp_path):
    from deploykit.analysis import inspect_model

    path, _ = exported("digits")
    out = tmp_path / "q.onnx"
    optimize_model(path, out, int8=True, calibration="digits")
    fp32, int8 = inspect_model(path).totals, inspect_model(out).totals
    assert int8.param_bytes < fp32.param_bytes / 3  # int8 weights plus per-channel scales
    # DequantizeLinear on a weight is folded into QLinearConv at run time: it holds no activation memory.
    assert int8.peak_activation_bytes <= 1.5 * fp32.peak_activation_bytes
    assert int8.macs == fp32.macs

