"""CleanupPass: Identity/Dropout/dead nodes, unused and duplicate initializers, constant folding."""

import numpy as np
from onnx import helper

from conftest import make_model, ops, ort_run, tensor_info, to_ir
from deploykit.passes import CleanupPass


def test_removes_what_inference_never_needs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"], name="id"),
        helper.make_node("Conv", ["xi", "w"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c"], ["d"], name="drop"),
        helper.make_node("Conv", ["d", "w2"], ["y"], name="conv2"),
        helper.make_node("Sigmoid", ["c"], ["dead"], name="dead"),
        # A weight computed at run time from constants: folded away.
        helper.make_node("Add", ["half", "half"], ["one"], name="add_consts"),
        helper.make_node("Mul", ["y", "one"], ["z"], name="mul"),
    ]
    inits = [("w", w), ("w2", np.ones((2, 4, 1, 1), np.float32)), ("w_copy", w.copy()),
             ("unused", np.zeros(3, np.float32)), ("half", np.full((1,), 0.5, np.float32))]
    proto = make_model(nodes, [tensor_info("x", [1, 3, 4, 4])], [tensor_info("z", [1, 2, 4, 4])], inits)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    model = to_ir(proto)
    p = CleanupPass()
    assert p(model).modified
    assert ops(model) == ["Conv", "Conv", "Mul"]
    assert "unused" not in model.graph.initializers and "w_copy" not in model.graph.initializers
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-6)
    assert any("Dropout" in n for n in p.notes)


def test_merges_identical_initializers():
    w = np.arange(16, dtype=np.float32).reshape(4, 4, 1, 1) / 10
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="c2")]
    proto = make_model(nodes, [tensor_info("x", [1, 4, 2, 2])], [tensor_info("y", [1, 4, 2, 2])],
                       [("w1", w), ("w2", w.copy())])
    model = to_ir(proto)
    CleanupPass()(model)
    assert len(model.graph.initializers) == 1
    x = np.ones((1, 4, 2, 2), np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], ort_run(proto, {"x": x})[0])
