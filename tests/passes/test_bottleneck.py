"""BottleneckPass: the notes' Inception example, best-rank-r against numpy's SVD, rank specs, the MAC budget."""

import re

import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ops, ort_run, tensor_info, to_ir
from deploykit import UserInputError
from deploykit.analysis import inspect_model
from deploykit.passes.bottleneck import BottleneckPass


def _conv(cin, cout, k, spatial, stride=1, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    pad = k // 2
    inits = [("w", rng.standard_normal((cout, cin, k, k)).astype(np.float32))]
    inputs = ["x", "w"]
    if bias:
        inits.append(("b", rng.standard_normal(cout).astype(np.float32)))
        inputs.append("b")
    out = (spatial + 2 * pad - k) // stride + 1
    node = helper.make_node("Conv", inputs, ["y"], name="conv", kernel_shape=[k, k], pads=[pad] * 4,
                            strides=[stride, stride])
    return make_model([node], [tensor_info("x", [1, cin, spatial, spatial])],
                      [tensor_info("y", [1, cout, out, out])], inits)


def test_inception_example_from_the_notes():
    """28x28x192 -> 5x5 conv -> 32: 120,422,400 MACs; through a 16-channel 1x1 bottleneck: 12,443,648."""
    proto = _conv(192, 32, 5, 28)
    assert inspect_model(proto).totals.macs == 120_422_400
    model = to_ir(proto)
    assert BottleneckPass("rank", 16)(model).modified
    assert ops(model) == ["Conv", "Conv"]
    import onnx_ir as ir

    assert inspect_model(ir.to_proto(model)).totals.macs == 12_443_648


def _rank_r_reference(w, r):
    """Best rank-r weight by numpy float64 SVD of the (Cout*K*K, Cin) matrix, back in conv layout."""
    cout, cin, kh, kw = w.shape
    m = w.transpose(0, 2, 3, 1).reshape(cout * kh * kw, cin).astype(np.float64)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    approx = (u[:, :r] * s[:r]) @ vt[:r]
    return approx.reshape(cout, kh, kw, cin).transpose(0, 3, 1, 2).astype(np.float32), s


@pytest.mark.parametrize("seed", range(5))
def test_pair_equals_the_best_rank_r_convolution(seed):
    rng = np.random.default_rng(seed)
    cin, cout = int(rng.integers(8, 24)), int(rng.integers(8, 24))
    k, stride, spatial = int(rng.choice([3, 5])), int(rng.choice([1, 2])), int(rng.integers(8, 16))
    out = (spatial + 2 * (k // 2) - k) // stride + 1
    # The largest rank whose 1x1 + KxK pair still costs fewer MACs than the original layer.
    r_max = (cout * cin * k * k * out * out - 1) // (cin * spatial * spatial + cout * k * k * out * out)
    r = int(rng.integers(1, min(r_max, cin - 1) + 1))
    proto = _conv(cin, cout, k, spatial, stride, seed)
    model = to_ir(proto)
    assert BottleneckPass("rank", r)(model).modified
    x = rng.standard_normal((1, cin, spatial, spatial)).astype(np.float32)
    w = np.asarray(next(t for t in proto.graph.initializer if t.name == "w").float_data or
                   np.frombuffer(next(t for t in proto.graph.initializer if t.name == "w").raw_data, np.float32))
    w = w.reshape(cout, cin, k, k)
    reference_w, s = _rank_r_reference(w, r)
    reference = _conv(cin, cout, k, spatial, stride, seed)
    for t in reference.graph.initializer:
        if t.name == "w":
            from onnx import numpy_helper

            t.CopyFrom(numpy_helper.from_array(reference_w, "w"))
    got = ort_run(model, {"x": x})[0]
    np.testing.assert_allclose(got, ort_run(reference, {"x": x})[0], rtol=1e-3, atol=1e-3)
    # Eckart-Young: the weight error is exactly the discarded singular values.
    assert np.linalg.norm(w - reference_w) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-4)


def test_full_rank_is_exact_and_not_applied_when_it_costs_more():
    proto = _conv(8, 8, 3, 10)
    model = to_ir(proto)
    p = BottleneckPass("rank", 8)
    assert not p(model).modified  # 1x1 8->8 + 3x3 8->8 costs more than the 3x3 alone
    assert any("not fewer than" in n for n in p.notes)


def test_rank_specs():
    assert BottleneckPass.from_spec("ratio=0.25").mode == "ratio"
    for bad in ["rank=0", "rank=2.5", "energy=1.5", "macs=0", "size=3", "rank"]:
        with pytest.raises(UserInputError, match="bad --bottleneck"):
            BottleneckPass.from_spec(bad)


def test_energy_keeps_the_requested_share():
    proto = _conv(64, 32, 3, 12, seed=3)
    model = to_ir(proto)
    p = BottleneckPass("energy", 0.5)
    p(model)
    (chosen,) = p.chosen.values()
    assert chosen["weight_error"] <= np.sqrt(0.5) + 1e-9


def _two_layer_model():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2", kernel_shape=[3, 3], pads=[1] * 4)]
    return make_model(nodes, [tensor_info("x", [1, 32, 16, 16])], [tensor_info("y", [1, 64, 16, 16])],
                      [("w1", rng.standard_normal((64, 32, 3, 3)).astype(np.float32)),
                       ("w2", rng.standard_normal((64, 64, 3, 3)).astype(np.float32))])


def test_mac_budget_is_met():
    import onnx_ir as ir

    proto = _two_layer_model()
    before = inspect_model(proto).totals.macs
    model = to_ir(proto)
    BottleneckPass("macs", 0.5)(model)
    after = inspect_model(ir.to_proto(model)).totals.macs
    assert after <= 0.5 * before
    assert after >= 0.3 * before  # spends the budget rather than slashing everything


def test_layer_filter():
    model = to_ir(_two_layer_model())
    p = BottleneckPass("ratio", 0.25, layers=["c2"])
    p(model)
    assert list(p.chosen) == ["c2"]
    with pytest.raises(UserInputError, match="no plain Conv, Gemm or MatMul with a constant weight named nope"):
        BottleneckPass("ratio", 0.25, layers=["nope"])(to_ir(_two_layer_model()))


def test_data_aware_fit_beats_weights_only_on_real_activations(exported):
    """On the trained digits model, fitting to calibration activations gives lower output error at the same rank."""
    import onnx
    import onnx_ir as ir

    from deploykit_zoo.digits_data import load_digits_split

    path, _ = exported("digits")
    proto = onnx.load(str(path))
    _, _, x_test, _ = load_digits_split()
    reference = ort_run(proto, {"input": x_test})[0]
    errors = {}
    for calibration in (None, "digits"):
        model = ir.from_proto(proto)
        BottleneckPass("ratio", 0.25, calibration=calibration)(model)
        errors[calibration] = np.abs(ort_run(model, {"input": x_test})[0] - reference).max()
    assert errors["digits"] < errors[None]


def test_one_by_one_convs_only_when_named():
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pointwise"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="spatial", kernel_shape=[3, 3], pads=[1] * 4)]
    proto = make_model(nodes, [tensor_info("x", [1, 64, 8, 8])], [tensor_info("y", [1, 64, 8, 8])],
                       [("w1", rng.standard_normal((64, 64, 1, 1)).astype(np.float32)),
                        ("w2", rng.standard_normal((64, 64, 3, 3)).astype(np.float32))])
    p = BottleneckPass("ratio", 0.25)
    p(to_ir(proto))
    assert list(p.chosen) == ["spatial"]
    named = BottleneckPass("ratio", 0.25, layers=["pointwise", "spatial"])
    named(to_ir(proto))
    assert sorted(named.chosen) == ["pointwise", "spatial"]


def _stack(channels=64, spatial=28, depth=3, seed=11):
    """Three 3x3 convs with ReLU: the layers a time budget has to choose between."""
    rng = np.random.default_rng(seed)
    nodes, inits, source = [], [], "x"
    for i in range(depth):
        inits.append((f"w{i}", (rng.standard_normal((channels, channels, 3, 3)) / 24).astype(np.float32)))
        nodes += [helper.make_node("Conv", [source, f"w{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        source = f"r{i}"
    return make_model(nodes, [tensor_info("x", [1, channels, spatial, spatial])],
                      [tensor_info(source, [1, channels, spatial, spatial])], inits)


def test_time_budget_uses_measured_timings_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path))
    proto = _stack()
    x = np.random.default_rng(0).standard_normal((1, 64, 28, 28)).astype(np.float32)
    reference = ort_run(proto, {"x": x})[0]
    first = BottleneckPass.from_spec("time=0.7")
    model = to_ir(proto)
    assert first(model).modified
    notes = " ".join(first.notes)
    assert "time budget:" in notes and "ms at batch 1 measured here" in notes
    # The layer timings' prediction was checked on the factorised model, timed beside the source.
    found = re.search(r"the chosen ranks run in (\d\.\d\d) of it, timed beside the model as it is \([1-3] check\(s\), "
                      r"predicted -> measured: ([\d., >-]+)\)", notes)
    assert found and found.group(1) in re.findall(r"-> (\d\.\d\d)", found.group(2))  # one of the checked ranks
    assert "timed 3 layer(s)" in notes and "0 measured now" not in notes
    import json

    stored = json.loads((tmp_path / "conv-timings.json").read_text())
    timings = next(iter(stored.values()))
    assert len(timings) > 3 and all(v > 0 for v in timings.values())  # each layer and its pairs, in seconds
    # What it chose is a real rank-r factorisation: MACs fall, outputs stay close to the source.
    macs = inspect_model(proto).totals.macs
    import onnx_ir as ir

    assert inspect_model(ir.to_proto(model)).totals.macs < macs
    out = ort_run(model, {"x": x})[0]
    # Closer to the source than no output at all, over the whole tensor: a single element (the max) can
    # land on a ReLU that the factorised layers switched off, whatever ranks the timings chose.
    assert np.linalg.norm(out - reference) < np.linalg.norm(reference)
    again = BottleneckPass.from_spec("time=0.7")
    assert again(to_ir(proto)).modified
    # The layer timings come from the cache; the whole model's latency is measured afresh each run, so
    # the chosen ranks may move with its noise, not the per-layer measurements.
    assert "(0 measured now, the rest from the cache)" in " ".join(again.notes)


def test_unreachable_time_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path))
    with pytest.raises(UserInputError, match=r"time=0.01 cannot be reached"):
        BottleneckPass.from_spec("time=0.01")(to_ir(_stack()))
    for bad in ("time=0", "time=1.5", "time=nan"):
        with pytest.raises(UserInputError):
            BottleneckPass.from_spec(bad)


def _pointwise_heavy():
    """ResNet-50's bottleneck block shape: 1x1 256->64, 3x3 64->64, 1x1 64->256, with ReLUs. The 1x1 layers
    hold 2/3 of the MACs, so no cut of the 3x3 alone reaches half of them."""
    rng = np.random.default_rng(5)
    shapes = [("reduce", 64, 256, 1), ("spatial", 64, 64, 3), ("expand", 256, 64, 1)]
    nodes, inits, source = [], [], "x"
    for name, cout, cin, k in shapes:
        inits.append((f"{name}_w", (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)))
        nodes += [helper.make_node("Conv", [source, f"{name}_w"], [name], name=name, kernel_shape=[k, k],
                                   pads=[k // 2] * 4),
                  helper.make_node("Relu", [name], [f"{name}_r"], name=f"{name}_relu")]
        source = f"{name}_r"
    return make_model(nodes, [tensor_info("x", [1, 256, 28, 28])], [tensor_info(source, [1, 256, 28, 28])], inits)


def test_measured_budgets_consider_one_by_one_layers(tmp_path, monkeypatch):
    import onnx_ir as ir

    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path))
    proto = _pointwise_heavy()
    names = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    ratio = BottleneckPass("ratio", 0.25)
    ratio(to_ir(proto))
    assert list(ratio.chosen) == ["spatial"]  # unmeasured modes leave unnamed 1x1 layers alone
    assert any("left 2 1x1 convolution(s) and fully-connected layer(s) as they are" in n for n in ratio.notes)

    model = to_ir(proto)
    timed = BottleneckPass("time", 0.6)
    timed(model)
    assert any("timed 3 layer(s)" in n for n in timed.notes)  # the 1x1 layers are timed candidates
    for name, chosen in timed.chosen.items():
        assert name in names and chosen["macs_after"] < chosen["macs_before"]
    # Whatever the timings chose is the rank-r factorisation: the output stays near the source's.
    x = np.random.default_rng(0).standard_normal((1, 256, 28, 28)).astype(np.float32)
    reference = ort_run(proto, {"x": x})[0]
    assert np.linalg.norm(ort_run(model, {"x": x})[0] - reference) < np.linalg.norm(reference)
    assert inspect_model(ir.to_proto(model)).totals.macs <= inspect_model(proto).totals.macs


def test_a_one_by_one_rank_is_taken_under_macs_only_where_its_time_pays():
    from deploykit.passes.bottleneck.layers import Layer, pays

    weight = np.zeros((256, 256, 1, 1), np.float32)
    layer = Layer(node=None, weight=weight, in_hw=196, out_hw=196, t_full=1e-3)
    # Rank 32 (256 -> 32 -> 256) has a quarter of the layer's MACs, so it must save 0.9 x 0.75 of its time.
    assert layer.macs(32) * 4 == layer.macs()
    layer.t_grid = {32: 0.30e-3}
    assert pays(layer, 32)
    layer.t_grid = {32: 0.40e-3}  # saves 0.60 of the time for 0.75 of the MACs
    assert not pays(layer, 32)
    assert not pays(layer, 16)  # a rank that was not timed is never taken
    spatial = Layer(node=None, weight=np.zeros((64, 64, 3, 3), np.float32), in_hw=196, out_hw=196, t_full=1e-3,
                     t_grid={16: 0.9e-3})
    assert pays(spatial, 16)  # KxK layers are taken on their MACs, as before timings existed


def _fully_connected(op, cin=48, cout=40, rows=None, seed=0, trans_b=1, alpha=1.0, beta=1.0):
    """One fully-connected layer as exporters write it: Gemm (bias, alpha, beta, either weight layout) or a
    MatMul over a 3-D input (a transformer's tokens)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin)).astype(np.float32)  # (out, in)
    if op == "Gemm":
        inits = [("w", w if trans_b else np.ascontiguousarray(w.T)), ("c", rng.standard_normal(cout).astype(np.float32))]
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
        shape_in, shape_out = [2, cin], [2, cout]
    else:
        inits = [("w", np.ascontiguousarray(w.T))]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
        shape_in, shape_out = [2, rows, cin], [2, rows, cout]
    return make_model([node], [tensor_info("x", shape_in)], [tensor_info("y", shape_out)], inits), w, inits


@pytest.mark.parametrize("op,trans_b,alpha,beta,rows", [("Gemm", 1, 1.0, 1.0, None), ("Gemm", 0, 0.5, 2.0, None),
                                                         ("MatMul", None, None, None, 7)])
def test_a_named_fully_connected_layer_becomes_its_best_rank_r_product(op, trans_b, alpha, beta, rows):
    """X W^T (alpha, beta, bias as written) against float64 numpy with W's truncated SVD at rank r."""
    kwargs = {} if op == "MatMul" else {"trans_b": trans_b, "alpha": alpha, "beta": beta}
    proto, w, inits = _fully_connected(op, rows=rows, **kwargs)
    r = 12
    model = to_ir(proto)
    p = BottleneckPass("rank", r, layers=["fc"])
    assert p(model).modified and ops(model) == [op, op]
    assert "fully-connected 48->40 -> 48->12->40" in " ".join(p.notes)
    x = np.random.default_rng(1).standard_normal([2, 48] if op == "Gemm" else [2, rows, 48]).astype(np.float32)
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    best = (u[:, :r] * s[:r]) @ vt[:r]
    expected = x.astype(np.float64) @ best.T
    if op == "Gemm":
        expected = alpha * expected + beta * dict(inits)["c"].astype(np.float64)
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    assert inspect_model(ir_proto(model)).totals.macs < inspect_model(proto).totals.macs


def ir_proto(model):
    import onnx_ir as ir

    return ir.to_proto(model)


def test_fully_connected_layers_are_left_alone_unless_named_or_timed():
    proto, _, _ = _fully_connected("Gemm")
    p = BottleneckPass("ratio", 0.25)
    assert not p(to_ir(proto)).modified
    assert any("fully-connected layer(s) as they are" in n for n in p.notes)


def test_data_aware_fit_of_a_fully_connected_layer_fits_the_data_better(tmp_path):
    """With calibration images whose flattened pixels are correlated, the whitened fit has the smaller error
    on them than the weights-only SVD at the same rank (it minimises ||(W - W') X||: Eckart-Young on the data)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w"], ["y"], name="fc", transB=1)]
    proto = make_model(nodes, [tensor_info("x", ["N", 8, 2, 2])], [tensor_info("y", ["N", 32])], [("w", w)])
    mixing = rng.standard_normal((32, 32)) * np.geomspace(1, 0.01, 32)  # a few directions carry most of x
    x = (rng.standard_normal((256, 32)) @ mixing.T).astype(np.float32)
    np.save(tmp_path / "calib.npy", x.reshape(256, 8, 2, 2))
    reference = x.astype(np.float64) @ w.T.astype(np.float64)
    errors = {}
    for calibration in (None, str(tmp_path / "calib.npy")):
        model = to_ir(proto)
        p = BottleneckPass("rank", 6, layers=["fc"], calibration=calibration, input_shape=(1, 8, 2, 2))
        assert p(model).modified
        errors[calibration] = np.linalg.norm(ort_run(model, {"x": x.reshape(256, 8, 2, 2)})[0] - reference)
    assert errors[str(tmp_path / "calib.npy")] < 0.5 * errors[None]
    # Fewer samples than input channels (VGG-16's first FC: 25,088 inputs, one vector a sample) give a
    # singular covariance: that layer is fitted on its weights, with a note, not whitened by noise.
    np.save(tmp_path / "few.npy", x[:16].reshape(16, 8, 2, 2))
    model = to_ir(proto)
    p = BottleneckPass("rank", 6, layers=["fc"], calibration=str(tmp_path / "few.npy"), input_shape=(1, 8, 2, 2))
    assert p(model).modified
    assert any("fitted 1 layer(s) on their weights alone" in n for n in p.notes)
    few = np.linalg.norm(ort_run(model, {"x": x.reshape(256, 8, 2, 2)})[0] - reference)
    assert few == pytest.approx(errors[None], rel=1e-4)


def _weight_heavy_head():
    """VGG's classifier at a smaller width: Gemm 2048 -> 2048, ReLU, Gemm 2048 -> 10. At batch 1 the first
    product reads 16 MiB of weights for 4M MACs: its time is the weight traffic that a low rank cuts."""
    rng = np.random.default_rng(3)
    inits = [("w1", (rng.standard_normal((2048, 2048)) / 45).astype(np.float32)),
             ("b1", np.zeros(2048, np.float32)),
             ("w2", (rng.standard_normal((10, 2048)) / 45).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Gemm", ["hr", "w2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [tensor_info("x", [1, 2048])], [tensor_info("y", [1, 10])], inits)


def test_a_time_budget_factorises_a_weight_bound_fully_connected_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path))
    proto = _weight_heavy_head()
    model = to_ir(proto)
    p = BottleneckPass.from_spec("time=0.6")
    assert p(model).modified
    assert "fc1" in p.chosen and p.chosen["fc1"]["macs_after"] < p.chosen["fc1"]["macs_before"]
    notes = " ".join(p.notes)
    found = re.search(r"the chosen ranks run in (\d\.\d\d) of it", notes)
    assert found and float(found.group(1)) < 0.8, notes  # measured on the whole model, beside the source
