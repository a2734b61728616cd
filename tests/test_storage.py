"""storage.save_ir_model: the tensor-by-tensor writer must give a file onnx and ONNX Runtime read as the model."""

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from deploykit import Engine
from deploykit.storage import save_ir_model


def test_streamed_file_holds_every_tensor_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {  # above and below the 1 MiB line where tensors are written on their own, several types
        "w": rng.standard_normal((600, 600)).astype(np.float32),
        "w16": rng.standard_normal((800, 800)).astype(np.float16),
        "idx": rng.integers(-2**40, 2**40, (300_000,), dtype=np.int64),
        "q": rng.integers(-128, 127, (1_200_000,), dtype=np.int8),
        "small": rng.standard_normal((4, 600)).astype(np.float32),
    }
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "small_row"], ["y"], name="add")]
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    inits.append(numpy_helper.from_array(arrays["small"][0], "small_row"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 600])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 600])], inits)
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    source.doc_string = "kept"
    out = save_ir_model(ir.from_proto(source), tmp_path / "m.onnx", metadata={"note": "x"})

    written = onnx.load(str(out))
    onnx.checker.check_model(written)
    got = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    assert set(got) == set(arrays) | {"small_row"}
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
    assert [n.name for n in written.graph.node] == ["mm", "add"] and written.doc_string == "kept"
    assert {p.key: p.value for p in written.metadata_props}["deploykit.note"] == "x"
    x = rng.standard_normal((3, 600)).astype(np.float32)
    np.testing.assert_allclose(Engine(out)(x), x @ arrays["w"] + arrays["small"][0], rtol=1e-4, atol=1e-3)
