"""Task metrics: how much a candidate model still does the task, in points, measured against the float model.

An accuracy budget (`--max-accuracy-drop`) is spent in the points of one metric. The default is what
fits a classifier: accuracy with labels, else top-1 agreement with the float model along the class axis
of the first output. That does not fit every task (a YOLO head puts box coordinates and class scores on
one axis; a CTC recogniser's per-step argmax ignores that repeats and blanks collapse), so `--metric`
chooses one:

- `top1`: top-1 agreement along the class axis of the first output (one-channel maps: foreground IoU).
- `accuracy`: top-1 accuracy against the labels of --validate DATA (an .npz with `y`).
- `ctc`: per-sequence agreement after greedy CTC decoding (argmax per step, repeats merged, blanks
  dropped) of a [N, T, C] output; `ctc:blank=K` for a blank other than class 0.
- `mask-iou`: foreground IoU (p > 0.5) of a one-channel [N, 1, H, W] map, in percent.
- `detection`: boxes of a YOLO-style head ([N, 4+C, A] or [N, A, 4+C]: cx, cy, w, h, then one score per
  class) after a score threshold and per-class NMS, matched to the float model's at IoU >= 0.5 with the
  same class; the score is the F1 of that matching (missing and spurious boxes both cost). Options:
  `detection:layout=auto|channels-first|anchors-first,score=0.25,nms=0.45,iou=0.5`. `iou=0.5:0.95` is
  COCO's range: the F1 averaged over IoU 0.50, 0.55, ..., 0.95, so that a box found again but moved
  costs points in proportion to how far it moved (at iou=0.5 a box that still overlaps its reference
  by half costs nothing).
- `PATH.py:FUNCTION`: your own. It is called as FUNCTION(reference_outputs, candidate_outputs, labels),
  with lists of numpy arrays (every output of each model over the whole validation set, in model
  order) and the labels or None, and returns a score in points (higher is better). The float model's
  score is FUNCTION(reference_outputs, reference_outputs, labels).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserInputError

BUILTIN = ("top1", "accuracy", "ctc", "mask-iou", "detection")


@dataclass
class Metric:
    """A task metric: `score(reference, candidate, labels)` in points, higher better; None where it cannot score."""

    name: str
    function: Callable[[list, list, np.ndarray | None], float | None]
    needs_labels: bool = False
    options: dict = field(default_factory=dict)
    # step(reference_outputs): the smallest change of the score one sample (or box) of this data can make,
    # in points; None where the score moves continuously or it cannot be told (a user's function)
    step: Callable[[list], float | None] | None = None

    def score(self, reference: list, candidate: list, labels=None) -> float | None:
        if self.needs_labels and labels is None:
            raise UserInputError(f"--metric {self.name} needs labels: give --validate an .npz with 'y'")
        value = self.function(reference, candidate, labels)
        if value is not None and not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)):
            raise UserInputError(f"--metric {self.name} returned {value!r}: a metric returns a finite number of points")
        return None if value is None else float(value)

    def smallest_step(self, reference: list) -> float | None:
        return None if self.step is None else self.step(reference)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}" + (f" ({extra})" if extra else "")


# -- classification -------------------------------------------------------------------------------
def _top1(reference, candidate, labels):
    from .validation import top1_agreement

    value = top1_agreement(reference[0], candidate[0])
    return None if value is None else 100.0 * value


def _accuracy(reference, candidate, labels):
    from .validation import accuracy

    value = accuracy(candidate[0], labels)
    return None if value is None else 100.0 * value


def _mask_iou(reference, candidate, labels):
    a, b = reference[0], candidate[0]
    if a.ndim != 4 or a.shape[1] != 1 or a.shape != b.shape:
        raise UserInputError(f"--metric mask-iou scores a one-channel [N, 1, H, W] map; the first output is "
                             f"{list(a.shape)}")
    from .validation import foreground_iou

    return 100.0 * foreground_iou(a, b)


# -- sequences ------------------------------------------------------------------------------------
def ctc_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, C] scores: the argmax per step, repeats merged, blanks dropped."""
    if scores.ndim != 3:
        raise UserInputError(f"--metric ctc decodes a [N, T, C] output of per-step class scores; the first output "
                             f"is {list(scores.shape)}")
    best = scores.argmax(axis=2)
    out = []
    for row in best:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(c) for c in row[keep] if c != blank))
    return out


def _ctc(blank: int):
    def score(reference, candidate, labels):
        a, b = ctc_decode(reference[0], blank), ctc_decode(candidate[0], blank)
        return 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)
    return score


# -- detection ------------------------------------------------------------------------------------
def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [K, 4] against every box in b [M, 4], boxes as (x1, y1, x2, y2)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def yolo_boxes(head: np.ndarray, layout: str = "auto", score: float = 0.25, nms: float = 0.45):
    """Per image of a YOLO-style head, (boxes [K, 4] as x1 y1 x2 y2, classes [K]) after the score threshold and
    per-class greedy NMS."""
    if head.ndim != 3:
        raise UserInputError(f"--metric detection reads a [N, 4+C, A] or [N, A, 4+C] head; the first output is "
                             f"{list(head.shape)}")
    if layout == "auto":
        layout = "channels-first" if head.shape[1] < head.shape[2] else "anchors-first"
    if layout == "channels-first":
        head = head.transpose(0, 2, 1)
    elif layout != "anchors-first":
        raise UserInputError(f"--metric detection: layout must be auto, channels-first or anchors-first, not {layout!r}")
    if head.shape[2] < 5:
        raise UserInputError(f"--metric detection: rows of {head.shape[2]} values cannot hold 4 box values and a score")
    images = []
    for rows in head:
        scores = rows[:, 4:]
        classes = scores.argmax(1)
        best = scores.max(1)
        keep = best >= score
        cx, cy, w, h = (rows[keep, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        cls, conf = classes[keep], best[keep]
        chosen = []
        for c in np.unique(cls):
            idx = np.where(cls == c)[0]
            idx = idx[np.argsort(-conf[idx], kind="stable")]
            while len(idx):
                chosen.append(idx[0])
                if len(idx) == 1:
                    break
                overlap = _iou_matrix(boxes[idx[:1]], boxes[idx[1:]])[0]
                idx = idx[1:][overlap < nms]
        chosen = np.array(sorted(chosen), dtype=int)
        images.append((boxes[chosen] if len(chosen) else np.zeros((0, 4)), cls[chosen] if len(chosen) else
                       np.zeros(0, int)))
    return images


def detection_f1(reference_images, candidate_images, iou: float = 0.5) -> float:
    """F1 (in points) of matching the candidate's boxes to the reference's: same class, IoU >= iou, each box once."""
    matched = total_ref = total_cand = 0
    for (rb, rc), (cb, cc) in zip(reference_images, candidate_images):
        total_ref += len(rb)
        total_cand += len(cb)
        if not len(rb) or not len(cb):
            continue
        overlap = _iou_matrix(rb, cb)
        overlap[rc[:, None] != cc[None, :]] = 0.0
        used = set()
        for r in np.argsort(-overlap.max(1), kind="stable"):
            order = [c for c in np.argsort(-overlap[r], kind="stable") if c not in used and overlap[r, c] >= iou]
            if order:
                used.add(order[0])
                matched += 1
    if total_ref + total_cand == 0:
        return 100.0
    return 100.0 * 2 * matched / (total_ref + total_cand)


def detection_f1_over(reference_images, candidate_images, thresholds) -> float:
    """detection_f1 averaged over IoU thresholds (COCO's 0.50:0.95 when given its ten)."""
    return float(np.mean([detection_f1(reference_images, candidate_images, t) for t in thresholds]))


IOU_STEP = 0.05  # COCO's step between the IoU thresholds of a range


def iou_thresholds(text: str) -> tuple[float, ...]:
    """'0.5' -> (0.5,); '0.5:0.95' -> (0.5, 0.55, ..., 0.95); refused unless each lies in (0, 1] and low <= high."""
    low, sep, high = str(text).partition(":")
    try:
        bounds = (float(low), float(high) if sep else float(low))
    except ValueError:
        raise UserInputError(f"--metric option iou={text!r} is not a number or a range LOW:HIGH "
                             "(e.g. 0.5:0.95)") from None
    if not all(0.0 < b <= 1.0 for b in bounds) or bounds[0] > bounds[1]:
        raise UserInputError(f"--metric option iou={text} must lie in (0, 1], a range as LOW:HIGH with LOW <= HIGH")
    steps = math.floor((bounds[1] - bounds[0]) / IOU_STEP + 1e-9)
    return tuple(round(bounds[0] + IOU_STEP * k, 10) for k in range(steps + 1))


def _detection(layout: str, score: float, nms: float, thresholds: tuple[float, ...]):
    def metric(reference, candidate, labels):
        return detection_f1_over(yolo_boxes(reference[0], layout, score, nms),
                                 yolo_boxes(candidate[0], layout, score, nms), thresholds)

    def step(reference):
        # With n reference boxes one spurious box costs the least, F1 2n / (2n + 1): 100 / (2n + 1) points, at
        # one IoU threshold of the range.
        boxes = sum(len(b) for b, _ in yolo_boxes(reference[0], layout, score, nms))
        return 100.0 / (2 * boxes + 1) / len(thresholds) if boxes else None
    return metric, step


# -- parsing --------------------------------------------------------------------------------------
def _options(text: str, allowed: dict) -> dict:
    out = dict(allowed)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise UserInputError(f"--metric option {part!r}: choose from {', '.join(f'{k}=' for k in allowed)}")
        default = allowed[key]
        try:
            out[key] = type(default)(value) if not isinstance(default, str) else value
        except ValueError:
            raise UserInputError(f"--metric option {key}={value!r} is not a {type(default).__name__}") from None
        if isinstance(out[key], float) and not (0.0 <= out[key] <= 1.0):
            raise UserInputError(f"--metric option {key}={value} must lie in [0, 1]")
    return out


def _user_function(path: str, name: str) -> Callable:
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"--metric {path}:{name}: {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"_deploykit_metric_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        raise UserInputError(f"importing {file} called sys.exit({exc.code!r})") from None
    except Exception as exc:
        raise UserInputError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise UserInputError(f"{file} has no function {name!r}: give --metric PATH.py:FUNCTION")

    def call(reference, candidate, labels):
        try:
            return function(reference, candidate, labels)
        except Exception as exc:
            raise UserInputError(f"--metric {path}:{name} failed: {type(exc).__name__}: {exc}") from exc
    return call


def parse_metric(spec: str | Metric | None) -> Metric | None:
    """A Metric for `--metric SPEC` (see the module docstring); None keeps the default."""
    if spec is None or isinstance(spec, Metric):
        return spec
    text = str(spec).strip()
    name, _, rest = text.partition(":")
    if name.endswith(".py"):
        return Metric(text, _user_function(name, rest))
    from .validation import per_sample_step, top1_step

    if name == "top1" and not rest:
        return Metric("top1", _top1, step=top1_step)
    if name == "accuracy" and not rest:
        return Metric("accuracy", _accuracy, needs_labels=True, step=per_sample_step)
    if name == "mask-iou" and not rest:
        return Metric("mask-iou", _mask_iou)
    if name == "ctc":
        options = _options(rest, {"blank": 0})
        return Metric("ctc", _ctc(options["blank"]), options=options, step=per_sample_step)
    if name == "detection":
        options = _options(rest, {"layout": "auto", "score": 0.25, "nms": 0.45, "iou": "0.5"})
        thresholds = iou_thresholds(options["iou"])
        score, step = _detection(options["layout"], options["score"], options["nms"], thresholds)
        return Metric("detection", score, options=options, step=step)
    raise UserInputError(f"unknown --metric {text!r}: choose {', '.join(BUILTIN)}, or PATH.py:FUNCTION")
