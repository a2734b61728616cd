"""FcToConvPass and sliding evaluation: one pass over a larger image equals the original on every crop."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import helper

from conftest import make_model, ops, ort_run, tensor_info, to_ir
from deploykit import UserInputError, export
from deploykit.passes import CleanupPass
from deploykit.passes.fc_to_conv import FcToConvPass
from deploykit.slide import evaluate_crops, sliding_model, slide


def _export(tmp_path, module, shape, name="net"):
    path = tmp_path / f"{name}.onnx"
    export(module, path, input_shape=shape)
    return path


class GapNet(nn.Module):
    """No padding anywhere, global-average-pool head: the conversion must be exact."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))


@pytest.mark.parametrize("image", [48, 52, 64])
def test_stacked_fc_head_equals_crop_by_crop_exactly(exported, image):
    path, _ = exported("lenet5")  # no padding, three stacked FC layers, total stride 4
    sm = sliding_model(path)
    assert sm.stride == 4 and sm.window == (32, 32) and not sm.padded
    x = np.random.default_rng(image).standard_normal((2, 1, image, image)).astype(np.float32)
    scores = slide(sm, x)
    reference = evaluate_crops(path, x, sm.window, sm.stride)
    cells = (image - 32) // 4 + 1
    assert scores.shape == reference.shape == (2, 10, cells, cells)
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_global_average_pool_head_equals_crop_by_crop(tmp_path, seed):
    torch.manual_seed(seed)
    path = _export(tmp_path, GapNet(), (1, 3, 22, 22))
    sm = sliding_model(path)
    assert sm.stride == 4 and sm.window == (22, 22)
    image = 22 + 4 * int(np.random.default_rng(seed).integers(1, 5))
    x = np.random.default_rng(seed).standard_normal((1, 3, image, image)).astype(np.float32)
    np.testing.assert_allclose(slide(sm, x), evaluate_crops(path, x, sm.window, 4), rtol=1e-5, atol=1e-5)


def test_finer_stride_by_shifted_passes(exported):
    path, _ = exported("lenet5")
    x = np.random.default_rng(1).standard_normal((1, 1, 50, 50)).astype(np.float32)
    for stride in (2, 1):
        scores = slide(path, x, stride=stride)
        reference = evaluate_crops(path, x, (32, 32), stride)
        assert scores.shape == reference.shape == (1, 10, (50 - 32) // stride + 1, (50 - 32) // stride + 1)
        np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserInputError, match="must divide"):
        slide(path, x, stride=3)


def test_vgg16_at_training_size_equals_the_original(exported):
    path, _ = exported("vgg16")
    sm = sliding_model(path)
    assert sm.stride == 32 and sm.padded
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = sm.session().run(None, {"input": x})[0]
    want = ort_run(onnx.load(str(path)), {"input": x})[0]
    assert got.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6)
    ops_after = [n.op_type for n in sm.proto.graph.node]
    assert "Gemm" not in ops_after and "Flatten" not in ops_after


def test_padded_network_on_real_digits(exported):
    """The trained digits CNN zero-pads every conv: measure how far its map is from its crops on real digits."""
    from deploykit_zoo.digits_data import load_digits_split

    path, _ = exported("digits")
    sm = sliding_model(path)
    assert sm.padded and sm.stride == 4 and sm.window == (8, 8)
    _, _, x_test, y_test = load_digits_split()
    # A 16x16 canvas holding four real test digits, one per quadrant.
    canvases, labels = [], []
    for i in range(0, 80, 4):
        c = np.zeros((1, 16, 16), np.float32)
        c[:, :8, :8], c[:, :8, 8:], c[:, 8:, :8], c[:, 8:, 8:] = x_test[i:i + 4]
        canvases.append(c)
        labels.append(y_test[i:i + 4])
    canvas = np.stack(canvases)
    scores = slide(sm, canvas)
    reference = evaluate_crops(path, canvas, (8, 8), 4)
    assert scores.shape == reference.shape == (20, 10, 3, 3)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    crop_pred = np.stack([reference[:, :, r, c].argmax(1) for r, c in corners], 1)
    map_pred = np.stack([scores[:, :, r, c].argmax(1) for r, c in corners], 1)
    labels = np.stack(labels)
    span = reference.max() - reference.min()
    deviation = np.abs(scores - reference).max() / span
    # Zero padding makes the map differ from lone crops: not equal, but it must stay a usable classifier.
    assert deviation > 1e-3
    assert deviation < 0.5
    assert (crop_pred == labels).mean() >= 0.95  # the crops themselves are the real test digits
    assert (map_pred == labels).mean() >= 0.75


def test_refuses_fc_not_reading_a_flattened_volume():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    proto = make_model(nodes, [tensor_info("x", [1, 8])],
                       [tensor_info("y", [1, 4])],
                       [("w", rng.standard_normal((4, 8)).astype(np.float32)), ("b", np.zeros(4, np.float32))])
    with pytest.raises(UserInputError, match="one NCHW image input|no fully-connected layer reading"):
        FcToConvPass()(to_ir(proto))


def test_refuses_a_body_that_does_not_slide():
    """A global max pool inside the body makes every output depend on the whole image: refused."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("GlobalMaxPool", ["a"], ["g"], name="gmp"),
        helper.make_node("Mul", ["a", "g"], ["m"], name="gate"),
        helper.make_node("Flatten", ["m"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
    ]
    proto = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 3])],
                       [("w1", rng.standard_normal((2, 2, 1, 1)).astype(np.float32)),
                        ("w2", rng.standard_normal((3, 32)).astype(np.float32))])
    model = to_ir(proto)
    CleanupPass()(model)
    with pytest.raises(UserInputError, match="GlobalMaxPool.*does not slide"):
        FcToConvPass()(model)


def test_matmul_add_head(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Flatten", ["a"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w2"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b2"], ["y"], name="bias"),
    ]
    proto = make_model(nodes, [tensor_info("x", [1, 2, 5, 5])], [tensor_info("y", [1, 3])],
                       [("w1", rng.standard_normal((4, 2, 2, 2)).astype(np.float32)),
                        ("w2", rng.standard_normal((64, 3)).astype(np.float32)),
                        ("b2", rng.standard_normal(3).astype(np.float32))])
    model = to_ir(proto)
    CleanupPass()(model)
    FcToConvPass()(model)
    assert ops(model) == ["Conv", "Conv"]
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(ort_run(model, {"x": x})[0].reshape(1, 3), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)
    big = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    path = tmp_path / "mm.onnx"
    onnx.save_model(proto, str(path))
    scores = slide(path, big)
    np.testing.assert_allclose(scores, evaluate_crops(path, big, (5, 5), 1), rtol=1e-5, atol=1e-5)


class TwoHeads(nn.Module):
    """A detector-style head: flatten (CHW order), a shared FC, a per-channel PReLU, then class and box FCs."""

    def __init__(self, tail=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 5 * 5, 32)
        self.act = nn.PReLU(32)
        self.cls = nn.Linear(32, 10)
        self.box = nn.Linear(32, 4)
        self.tail = tail
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(0.05, 0.6, 32))  # one distinct slope per channel

    def forward(self, x):
        f = self.act(self.fc(torch.flatten(self.body(x), 1)))
        boxes = self.box(f)
        return self.cls(f), boxes.reshape(-1, 2, 2) if self.tail == "reshape" else boxes


def test_a_branching_head_after_prelu_converts_every_fc(tmp_path):
    torch.manual_seed(0)
    net = TwoHeads().eval()
    path = _export(tmp_path, net, (1, 3, 12, 12))
    model = to_ir(onnx.load(str(path)))
    CleanupPass()(model)
    FcToConvPass()(model)
    assert "Gemm" not in ops(model) and "MatMul" not in ops(model)
    proto = __import__("onnx_ir").to_proto(model)
    # A 16x16 image holds 3x3 crops of 12x12 at the body's stride 2; the body has no padding, so each cell is
    # exactly its crop run through the original network.
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    scores, boxes = ort_run(proto, {proto.graph.input[0].name: x})
    assert scores.shape == (1, 10, 3, 3) and boxes.shape == (1, 4, 3, 3)
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                cls, box = net(torch.from_numpy(x[:, :, 2 * i:2 * i + 12, 2 * j:2 * j + 12]))
                np.testing.assert_allclose(scores[0, :, i, j], cls[0].numpy(), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(boxes[0, :, i, j], box[0].numpy(), rtol=1e-4, atol=1e-5)


def test_a_head_that_reshapes_an_fc_output_is_refused_before_any_rewrite(tmp_path, cli):
    torch.manual_seed(0)
    path = _export(tmp_path, TwoHeads(tail="reshape").eval(), (1, 3, 12, 12))
    out = tmp_path / "out.onnx"
    result = cli("optimize", path, "--fc-to-conv", "-o", out)
    assert result.code == 2 and "takes only (N, K) vectors" in result.err and "Reshape" in result.err
    assert not out.exists()
