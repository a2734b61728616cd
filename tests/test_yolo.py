"""A trained YOLOv8n detector from a registry package (nudenet's 320n.onnx), judged by its package's own decoding.

Boxes come from nudenet's own pre- and post-processing (letterbox, score threshold, NMS) run on the
photographs scikit-image ships (skimage.data); only the ONNX session is swapped. A deploykit artefact
passes when it finds the same boxes as the untouched fp32 model: same class, IoU >= 0.9.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

nudenet = pytest.importorskip("nudenet")
skimage_data = pytest.importorskip("skimage.data")

from nudenet.nudenet import _postprocess, _read_image  # noqa: E402

from deploykit import Engine  # noqa: E402

MODEL = os.path.join(os.path.dirname(nudenet.__file__), "320n.onnx")
SHAPE = "1,3,320,320"


def _photographs() -> list[np.ndarray]:
    """BGR photographs with people in them, whole, cropped and mirrored: the boxes the fp32 model finds."""
    out = []
    for name, crops in (("astronaut", [(0, 0, 512, 512), (0, 100, 350, 450), (50, 50, 400, 400)]),
                        ("camera", [(0, 0, 512, 512), (0, 100, 400, 500)])):
        image = getattr(skimage_data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        for top, left, bottom, right in crops:
            crop = np.ascontiguousarray(image[top:bottom, left:right, ::-1])
            out += [crop, np.ascontiguousarray(crop[:, ::-1])]
    return out


def detect(model_path, images) -> list[list[dict]]:
    engine = Engine(model_path)  # as recorded in the file: a recipe's artefact runs in the engine it chose
    found = []
    for image in images:
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = _read_image(image, 320)
        outputs = engine.run({"images": blob})
        found.append(_postprocess(outputs, x_pad, y_pad, x_ratio, y_ratio, width, height, 320, 320))
    return found


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def boxes_kept(reference: list[list[dict]], candidate: list[list[dict]], iou: float = 0.9) -> tuple[int, int]:
    """(reference boxes the candidate finds again with the same class, reference boxes)."""
    kept = total = 0
    for ref, got in zip(reference, candidate):
        for box in ref:
            total += 1
            kept += any(g["class"] == box["class"] and _iou(g["box"], box["box"]) >= iou for g in got)
    return kept, total


@pytest.fixture(scope="module")
def reference():
    images = _photographs()
    return images, detect(MODEL, images)


def test_the_photographs_give_the_detector_work(reference):
    _, found = reference
    assert sum(len(f) for f in found) >= 8  # faces in every photograph: a check with nothing to find proves nothing


@pytest.mark.parametrize("flags", [[], ["--fp16"]], ids=["default", "fp16"])
def test_optimized_detector_finds_the_same_boxes(reference, cli, tmp_path, flags):
    """fp16 used to write an invalid graph here: YOLOv8's decode (Range over the grid) had no float16 kernel."""
    images, expected = reference
    out = tmp_path / "yolo.onnx"
    result = cli("optimize", MODEL, "--input-shape", SHAPE, *flags, "-o", out)
    assert result.code == 0, result.err
    kept, total = boxes_kept(expected, detect(out, images))
    assert kept == total, (kept, total)


def test_every_verb_runs_on_the_detector(cli, tmp_path):
    assert cli("inspect", MODEL, "--input-shape", SHAPE).code == 0
    result = cli("bench", MODEL, "--input-shape", SHAPE, "--iterations", "3", "--warmup", "1", "--batch", "1,2")
    assert result.code == 0, result.err
    result = cli("package", MODEL, "--triton", tmp_path / "repo")
    assert result.code == 0 and (tmp_path / "repo" / "320n" / "config.pbtxt").is_file()
    result = cli("slide", MODEL, "--image-size", "64")
    assert result.code == 2 and "nothing to slide" in result.err


def letterboxed_photographs() -> np.ndarray:
    """Calibration / validation data as nudenet feeds its model: skimage's photographs letterboxed to 320x320,
    mirrored too (bench/recipe.py uses the same)."""
    images = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "colorwheel"):
        image = getattr(skimage_data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        bgr = np.ascontiguousarray(image[..., ::-1])
        for view in (bgr, np.ascontiguousarray(bgr[:, ::-1])):
            images.append(_read_image(view, 320)[0][0])
    return np.stack(images).astype(np.float32)


@pytest.fixture(scope="module")
def letterboxed(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolo") / "letterboxed.npy"
    np.save(path, letterboxed_photographs())
    return path


def test_plain_int8_keeps_the_boxes_with_the_decoding_tail_in_float(reference, letterboxed, cli, tmp_path):
    """Quantizing YOLOv8's decode (DFL softmax, grid arithmetic, box/score concat) lost 5 of 12 boxes here; with
    the tail in float, as by default, int8 keeps them (the issue's target: at least 90%)."""
    images, expected = reference
    out = tmp_path / "int8.onnx"
    result = cli("optimize", MODEL, "--input-shape", SHAPE, "--int8", "--calibration", letterboxed, "-o", out)
    assert result.code == 0, result.err
    assert "kept the post-processing tail in float" in result.out
    kept, total = boxes_kept(expected, detect(out, images))
    assert kept >= 0.9 * total, (kept, total)


def test_budgeted_int8_in_detection_points_keeps_the_convolutions_in_int8(reference, letterboxed, cli, tmp_path):
    """Judged by top-1 agreement along axis 1 (box coordinates and class scores mixed) the budget sent 273 of
    275 nodes back to float; in points of the detection metric, at least 80% of the convolutions stay int8."""
    import onnx

    images, expected = reference
    out = tmp_path / "budgeted.onnx"
    result = cli("optimize", MODEL, "--input-shape", SHAPE, "--int8", "--calibration", letterboxed,
                 "--validate", letterboxed, "--metric", "detection", "--max-accuracy-drop", "1", "-o", out)
    assert result.code == 0, result.err
    assert "accuracy budget: detection" in result.out
    convs = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"]
    quantized_inputs = {n.output[0] for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"}
    in_int8 = [c for c in convs if c.input[0] in quantized_inputs and c.input[1] in quantized_inputs]
    assert len(in_int8) >= 0.8 * len(convs), (len(in_int8), len(convs))
    kept, total = boxes_kept(expected, detect(out, images))
    assert kept >= 0.9 * total, (kept, total)


def test_recipe_fast_picks_an_artefact_that_keeps_boxes_on_held_out_photographs(cli, tmp_path):
    """The recipe chooses among engines and precisions on one half of the data (calibration and validation),
    and its written artefact, run as recorded, keeps the boxes on photographs it never saw. The metric is
    held over COCO's IoU range: at IoU 0.5 alone a low-rank bottleneck that moved most boxes (IoU < 0.9 to
    the fp32 boxes) held the budget on these few photographs, and this test, which asks for the same boxes,
    rightly failed it."""
    import json

    data = letterboxed_photographs()
    seen = tmp_path / "seen.npy"
    np.save(seen, data[::2])  # the whole photographs, unmirrored; held out below: mirrored crops of them
    out = tmp_path / "fast.onnx"
    result = cli("optimize", MODEL, "--input-shape", SHAPE, "--recipe", "fast", "--calibration", seen,
                 "--validate", seen, "--metric", "detection:iou=0.5:0.95", "--json", "-o", out)
    assert result.code == 0, result.err
    recipe = json.loads(result.out)["recipe"]
    chosen = next(c for c in recipe["candidates"] if c["verdict"] == "chosen")
    assert chosen["drop"] <= 1.0 and recipe["chosen"] == chosen["label"]
    if any(c["engine"] == "ov-cpu" for c in recipe["candidates"]):
        # OpenVINO's int8 rounds differently: where ORT's search does not hold there, int8 is searched again in it.
        in_openvino = [c for c in recipe["candidates"] if c["engine"] == "ov-cpu" and c["precision"] == "int8"]
        assert any(c["drop"] is not None and c["drop"] <= 1.0 for c in in_openvino), (in_openvino,
                                                                                       recipe["not_compared"])
    held_out = [np.ascontiguousarray(image[:, ::-1]) for image in _photographs()[::2]]
    kept, total = boxes_kept(detect(MODEL, held_out), detect(out, held_out))  # Engine(out): the recorded engine
    assert total and kept >= 0.9 * total, (recipe["chosen"], kept, total)
