"""A model past protobuf's 2 GB limit (weights in external data) through inspect, optimize and build.

Protobuf cannot hold such a model in one message: any step that serialises the whole model fails.
The reference for every output is the source model itself, run in ONNX Runtime from its files.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit import Engine

CHANNELS = 64
CLASSES = 140_000  # 4096 x 140,000 float32 weights: 2.29 GB, past protobuf's 2 GiB


@pytest.fixture(scope="module")
def large_model(tmp_path_factory):
    return write_large_model(tmp_path_factory.mktemp("large"))


def write_large_model(folder):
    """Conv -> BatchNorm -> Relu -> Flatten -> Gemm, the Gemm's weight over 2 GB, saved with onnx_ir."""
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    small = {
        "w1": rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32) * 0.2,
        "gamma": rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32),
        "beta": rng.standard_normal(CHANNELS).astype(np.float32) * 0.1,
        "mean": rng.standard_normal(CHANNELS).astype(np.float32) * 0.1,
        "var": rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32),
        "fc_bias": rng.standard_normal(CLASSES).astype(np.float32) * 0.01,
    }
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w1", "fc_bias"], ["y"], transB=1, name="fc")]  # w1 replaced below
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
                              [numpy_helper.from_array(a, n) for n, a in small.items()])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    weight = rng.standard_normal((CLASSES, CHANNELS * 64), dtype=np.float32) * 0.01
    value = ir.Value(name="fc_weight", const_value=ir.Tensor(weight, name="fc_weight"),
                     type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(weight.shape))
    model.graph.initializers["fc_weight"] = value
    list(model.graph)[-1].replace_input_with(1, value)
    path = folder / "large.onnx"
    ir.save(model, path, external_data="large.onnx.data")
    del model, value, weight
    assert (folder / "large.onnx.data").stat().st_size > 2**31
    return path


def test_inspect_counts_the_weights_from_the_file(large_model, cli):
    result = cli("inspect", large_model, "--input-shape", "1,3,8,8", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    expected = CHANNELS * 27 + 4 * CHANNELS + CLASSES * (CHANNELS * 64 + 1)
    assert report["totals"]["params"] == expected
    assert report["totals"]["macs"] == CHANNELS * 27 * 64 + CLASSES * CHANNELS * 64


def test_optimize_and_build_keep_the_outputs(large_model, tmp_path, cli, monkeypatch):
    out = tmp_path / "opt.onnx"
    result = cli("optimize", large_model, "-o", out, "--input-shape", "1,3,8,8", "--json")
    assert result.code == 0, result.err
    passes = {p["name"]: p for p in json.loads(result.out)["passes"]}
    assert passes["fold"]["nodes_after"] < passes["fold"]["nodes_before"]  # the BatchNorm really went
    assert (tmp_path / "opt.onnx.data").stat().st_size > 2**31  # the weights beside it, not inside
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(out), load_external_data=False).graph.node)

    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    built = tmp_path / "built.onnx"
    result = cli("build", out, "-o", built, "--backend", "ort-cpu")
    assert result.code == 0, result.err

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with Engine(large_model, lean_memory=True) as source:
        reference = source(x)
    for artefact in (out, built):
        with Engine(artefact, lean_memory=True) as engine:
            got = engine(x)
        assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
