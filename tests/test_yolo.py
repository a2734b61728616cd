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
    engine = Engine(model_path, providers="cpu")
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
