"""deploykit.analysis (inspect): the cs231n VGG-16 table, MACs against an independent count, peak live memory, geometry lint."""

import json
import math
import re

import numpy as np
import pytest
from onnx import helper

from conftest import DATA, make_model, tensor_info
from deploykit.analysis import inspect_model
from deploykit.zoo import count_macs, load_zoo_model

ROW = re.compile(r"^\s*([A-Z0-9-]+): \[(\d+)x(\d+)x(\d+)\]\s+memory:\s+([\d*]+)\S*\s+weights:\s+([^=]+)")


def _product(expr: str) -> int:
    return math.prod(int(t) for t in re.findall(r"\d+", expr))


def _table():
    rows = []
    for line in (DATA / "cs231n_vgg16_table.txt").read_text().splitlines():
        m = ROW.match(line)
        if m:
            kind, h, w, c, memory, weights = m.groups()
            rows.append((kind, (int(h), int(w), int(c)), _product(memory), _product(weights) if weights.strip() != "0" else 0))
    return rows


@pytest.fixture(scope="module")
def vgg_report(exported):
    path, _ = exported("vgg16")
    return inspect_model(path)


def test_vgg16_matches_the_cs231n_table_row_by_row(vgg_report):
    table = _table()
    assert len(table) == 22  # INPUT, 13 CONV, 5 POOL, 3 FC
    # One row of the table per volume the network creates: the ReLUs run in place, Flatten is a view.
    layers = [l for l in vgg_report.layers if not l.aliases_input]
    assert [l.op for l in layers] == ["Conv"] * 2 + ["MaxPool"] + ["Conv"] * 2 + ["MaxPool"] + \
        (["Conv"] * 3 + ["MaxPool"]) * 3 + ["Gemm"] * 3
    input_kind, (h, w, c), memory, weights = table[0]
    assert vgg_report.input_shapes["input"] == [1, c, h, w] and memory == 224 * 224 * 3
    for layer, (kind, (h, w, c), memory, weights) in zip(layers, table[1:]):
        if kind == "FC":
            assert layer.output_shape == [1, c]
        else:
            assert layer.output_shape == [1, c, h, w], kind
        assert layer.activation_elements == memory, kind
        # The table lists weights without biases; every conv and FC layer here has C biases.
        biases = c if weights else 0
        assert layer.params - biases == weights, kind


def test_vgg16_totals_and_the_notes_slip(vgg_report):
    table = _table()
    totals = vgg_report.totals
    assert totals.params == 138_357_544  # the notes: "TOTAL params: 138M parameters"
    assert totals.activation_elements == sum(memory for _, _, memory, _ in table) == 15_237_608
    # Correction of tests/data/cs231n_vgg16_table.txt's last line (line 324 of
    # shared/seeds/002_06fbac611a69ccfe.txt): "TOTAL memory: 24M * 4 bytes ~= 93MB / image".
    # The rows above it add up to 15.2M values, 61 MB in fp32, not 24M / 93 MB.
    assert abs(totals.activation_elements - 24e6) > 8e6
    assert totals.activation_bytes == 4 * 15_237_608
    assert round(totals.activation_bytes / 1e6) == 61
    # At inference the peak is the largest (input, output) pair: conv1_2 reading and writing 224x224x64.
    assert totals.peak_activation_bytes == 2 * 224 * 224 * 64 * 4
    assert totals.macs == 15_470_264_320


@pytest.mark.parametrize("name,shape", [("resnet18", (1, 3, 64, 64)), ("googlenet", (1, 3, 64, 64)),
                                        ("densenet121", (1, 3, 64, 64)), ("lenet5", None), ("digits", None)])
def test_macs_agree_with_pytorch_hooks(exported, name, shape):
    path, result = exported(name, shape)
    report = inspect_model(path)
    assert report.totals.macs == count_macs(load_zoo_model(name).module, result.input_shape)


def _chain(spatial=16):
    """input -> Conv(3->8) -> Relu -> Conv(8->16) -> Relu -> MaxPool -> Conv(16->4), all 3x3 pad 1."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.standard_normal(s).astype(np.float32) for s in [(8, 3, 3, 3), (16, 8, 3, 3), (4, 16, 3, 3)])
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", **conv),
        helper.make_node("Relu", ["a"], ["b"], name="r1"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="c2", **conv),
        helper.make_node("Relu", ["c"], ["d"], name="r2"),
        helper.make_node("MaxPool", ["d"], ["e"], name="p", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["e", "w3"], ["y"], name="c3", **conv),
    ]
    return make_model(nodes, [tensor_info("x", [1, 3, spatial, spatial])],
                      [tensor_info("y", [1, 4, spatial // 2, spatial // 2])],
                      [("w1", w1), ("w2", w2), ("w3", w3)])


def test_peak_live_memory_below_total_on_a_plain_chain(save):
    report = inspect_model(save(_chain()))
    hw, q = 16 * 16, 8 * 8
    volumes = {"x": 3 * hw, "a": 8 * hw, "c": 16 * hw, "e": 16 * q, "y": 4 * q}
    totals = report.totals
    assert totals.activation_elements == sum(volumes.values())
    # The largest moment: c2 reads a (8x16x16) while writing c (16x16x16).
    assert totals.peak_activation_bytes == 4 * (volumes["a"] + volumes["c"])
    assert totals.peak_activation_bytes < totals.activation_bytes
    assert totals.params == 8 * 27 + 16 * 72 + 4 * 144
    assert totals.macs == hw * 8 * 27 + hw * 16 * 72 + q * 4 * 144


def test_relu_is_not_in_place_when_its_input_has_another_reader(save):
    w = np.ones((4, 4, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="c"),
        helper.make_node("Relu", ["a"], ["b"], name="r"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    model = make_model(nodes, [tensor_info("x", [1, 4, 8, 8])], [tensor_info("y", [1, 4, 8, 8])], [("w", w)])
    report = inspect_model(save(model))
    relu = next(l for l in report.layers if l.op == "Relu")
    assert not relu.aliases_input
    assert report.totals.peak_activation_bytes == 3 * 4 * 256  # a, b and y live during the Add


def _single(op, spatial, kernel, stride, pad, **extra):
    inputs = ["x", "w"] if op == "Conv" else ["x"]
    attrs = dict(strides=[stride, stride], pads=[pad] * 4, **extra)
    if op != "Conv":
        attrs["kernel_shape"] = [kernel, kernel]
    node = helper.make_node(op, inputs, ["y"], name="layer", **attrs)
    out = (spatial - kernel + 2 * pad) // stride + 1
    inits = [("w", np.ones((2, 1, kernel, kernel), np.float32))] if op == "Conv" else []
    channels = 2 if op == "Conv" else 1
    return make_model([node], [tensor_info("x", [1, 1, spatial, spatial])],
                      [tensor_info("y", [1, channels, out, out])], inits)


def test_stride_warning_quotes_the_formula(save):
    report = inspect_model(save(_single("Conv", 10, 3, 2, 0)))
    assert len(report.warnings) == 1
    text = report.warnings[0]
    assert "(W − F + 2P)/S + 1 = (10 − 3 + 2·0)/2 + 1 = 4.5" in text
    assert "the last 1 input rows/columns are never seen" in text


def test_stride_warning_for_pools_and_when_only_padding_is_skipped(save):
    pool = inspect_model(save(_single("MaxPool", 10, 3, 2, 0))).warnings
    assert len(pool) == 1 and "4.5" in pool[0] and "MaxPool" in pool[0]
    padded = inspect_model(save(_single("Conv", 10, 3, 2, 1))).warnings
    assert len(padded) == 1 and "= 5.5" in padded[0] and "only trailing zero padding" in padded[0]


@pytest.mark.parametrize("spatial,kernel,stride,pad", [(11, 3, 2, 0), (224, 3, 1, 1), (32, 2, 2, 0)])
def test_no_warning_when_the_geometry_tiles(save, spatial, kernel, stride, pad):
    assert inspect_model(save(_single("Conv", spatial, kernel, stride, pad))).warnings == []


def test_json_output_schema(cli, save):
    result = cli("inspect", save(_chain()), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert set(data["totals"]) == {"params", "param_bytes", "macs", "activation_elements", "activation_bytes",
                                   "peak_activation_bytes"}
    assert {"name", "op", "output_shape", "params", "macs", "activation_elements", "activation_bytes"} <= set(data["layers"][0])
    assert [l["name"] for l in data["layers"]] == ["c1", "r1", "c2", "r2", "p", "c3"]
    assert isinstance(data["warnings"], list)


def test_dynamic_model_uses_given_or_recorded_shape(exported):
    path, _ = exported("resnet18", (1, 3, 64, 64))
    recorded = inspect_model(path)
    assert recorded.input_shapes["input"] == [1, 3, 64, 64]
    bigger = inspect_model(path, (4, 3, 64, 64))
    assert bigger.input_shapes["input"] == [4, 3, 64, 64]
    assert bigger.totals.macs == count_macs(load_zoo_model("resnet18").module, (4, 3, 64, 64))
    assert bigger.totals.peak_activation_bytes == 4 * recorded.totals.peak_activation_bytes
    assert bigger.totals.params == recorded.totals.params
