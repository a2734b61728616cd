"""Task metrics, each against a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit import UserInputError
from deploykit.metrics import ctc_decode, detection_f1, detection_f1_over, iou_thresholds, parse_metric, yolo_boxes


def _one_hot_steps(sequence, classes=5):
    steps = np.zeros((len(sequence), classes), np.float32)
    steps[np.arange(len(sequence)), sequence] = 1.0
    return steps


def test_ctc_decoding_merges_repeats_and_drops_blanks():
    # steps: a a _ a b b _ _ c  ->  a a b c  (the blank between the a's keeps them apart)
    steps = _one_hot_steps([1, 1, 0, 1, 2, 2, 0, 0, 3])
    assert ctc_decode(steps[None]) == [(1, 1, 2, 3)]
    assert ctc_decode(steps[None], blank=2) == [(1, 0, 1, 0, 3)]


def test_ctc_metric_counts_whole_sequences():
    reference = np.stack([_one_hot_steps([1, 1, 0, 2]), _one_hot_steps([3, 0, 3, 3])])
    # Sample 0 differs per step (a repeat where there was a blank) but decodes the same: "1 2" both times.
    # Sample 1 loses its blank: "3 3" becomes "3".
    candidate = np.stack([_one_hot_steps([1, 1, 2, 2]), _one_hot_steps([3, 3, 3, 3])])
    assert parse_metric("ctc").score([reference], [candidate]) == pytest.approx(50.0)
    assert parse_metric("ctc").score([reference], [reference]) == pytest.approx(100.0)


def _head(rows):
    """A YOLO-style [1, 4+C, A] head from rows of (cx, cy, w, h, score per class...)."""
    return np.array(rows, np.float32).T[None]


def test_yolo_boxes_threshold_and_per_class_nms():
    head = _head([[50, 50, 20, 20, 0.9, 0.0],    # class 0, kept
                  [51, 50, 20, 20, 0.8, 0.0],    # class 0, IoU 0.9 with the first: suppressed
                  [51, 50, 20, 20, 0.0, 0.7],    # class 1 at the same place: NMS is per class, kept
                  [10, 10, 4, 4, 0.1, 0.2]]      # below the 0.25 threshold
                 + [[5, 5, 2, 2, 0.0, 0.0]] * 4)  # empty anchors: a head has more anchors than channels
    (boxes, classes), = yolo_boxes(head)
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(boxes, [[40, 40, 60, 60], [41, 40, 61, 60]])
    (same, _), = yolo_boxes(head.transpose(0, 2, 1), layout="anchors-first")
    np.testing.assert_allclose(same, boxes)


def test_detection_f1_counts_missing_and_spurious_boxes():
    reference = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1]))]
    # One box found again (IoU 81/100... shifted by 1: 9x10 / (100 + 100 - 90) = 0.818), one missing, one spurious,
    # and one in the right place with the wrong class.
    candidate = [(np.array([[1, 0, 11, 10], [50, 50, 60, 60], [20, 20, 30, 30]], float), np.array([0, 0, 0]))]
    # matched 1 of 2 reference boxes, 3 candidate boxes: F1 = 2 * 1 / (2 + 3) = 40 points
    assert detection_f1(reference, candidate) == pytest.approx(40.0)
    assert detection_f1(reference, candidate, iou=0.9) == pytest.approx(0.0)
    assert detection_f1(reference, reference) == pytest.approx(100.0)


def test_detection_over_cocos_iou_range_charges_a_moved_box_by_how_far_it_moved():
    reference = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))]
    # The first box moved 2 px: IoU 8x10 / (100 + 100 - 80) = 2/3, so it matches at 0.50, 0.55, 0.60, 0.65 and
    # not at 0.70 ... 0.95; the second is exact. F1 per threshold: 100 four times, 2 * 1 / (2 + 2) = 50 six times.
    candidate = [(np.array([[2, 0, 12, 10], [20, 20, 30, 30]], float), np.array([0, 0]))]
    assert detection_f1(reference, candidate) == pytest.approx(100.0)
    metric = parse_metric("detection:iou=0.5:0.95")
    assert metric.describe() == "detection (layout=auto, score=0.25, nms=0.45, iou=0.5:0.95)"
    assert detection_f1_over(reference, candidate, iou_thresholds("0.5:0.95")) == pytest.approx((4 * 100 + 6 * 50) / 10)
    assert iou_thresholds("0.5:0.95") == pytest.approx([0.5 + 0.05 * k for k in range(10)])


def test_the_smallest_step_each_metric_can_take_on_the_data():
    # Two boxes survive threshold and NMS: one spurious box more gives F1 2*2 / (2 + 3) = 80, a 20-point step;
    # over COCO's ten thresholds a box can miss at one threshold only, 2 points.
    head = _head([[50, 50, 20, 20, 0.9, 0.0], [51, 50, 20, 20, 0.0, 0.7]] + [[5, 5, 2, 2, 0.0, 0.0]] * 4)
    assert parse_metric("detection").smallest_step([head]) == pytest.approx(20.0)
    assert parse_metric("detection:iou=0.5:0.95").smallest_step([head]) == pytest.approx(2.0)
    assert parse_metric("ctc").smallest_step([np.zeros((8, 5, 3))]) == pytest.approx(12.5)  # one of 8 sequences
    assert parse_metric("top1").smallest_step([np.zeros((4, 10))]) == pytest.approx(25.0)  # one of 4 samples
    assert parse_metric("top1").smallest_step([np.zeros((2, 3, 4, 5))]) == pytest.approx(2.5)  # one of 40 positions
    assert parse_metric("mask-iou").smallest_step([np.zeros((2, 1, 4, 4))]) is None  # continuous


def test_a_users_metric_function_is_called_with_every_output(tmp_path):
    module = tmp_path / "my_metric.py"
    module.write_text("def second_output_close(reference, candidate, labels):\n"
                      "    import numpy as np\n"
                      "    return 100.0 * float(np.mean(np.abs(reference[1] - candidate[1]) < 0.5))\n")
    metric = parse_metric(f"{module}:second_output_close")
    ref = [np.zeros((4, 2)), np.array([0.0, 1.0, 2.0, 3.0])]
    cand = [np.ones((4, 2)), np.array([0.0, 1.0, 2.9, 3.1])]
    assert metric.score(ref, cand) == pytest.approx(75.0)


@pytest.mark.parametrize("spec, says", [("iou", "unknown --metric"), ("detection:score=2", "must lie in"),
                                        ("detection:size=3", "choose from"), ("nope.py:f", "does not exist"),
                                        ("detection:iou=0.9:0.5", "LOW <= HIGH"), ("detection:iou=x", "not a number"),
                                        ("detection:iou=0", "must lie in")])
def test_bad_metric_specs_are_one_line(spec, says):
    with pytest.raises(UserInputError, match=says):
        parse_metric(spec)


def test_accuracy_needs_labels_and_top1_does_not():
    scores = [np.array([[0.1, 0.9], [0.8, 0.2]])]
    with pytest.raises(UserInputError, match="needs labels"):
        parse_metric("accuracy").score(scores, scores)
    assert parse_metric("accuracy").score(scores, scores, np.array([1, 1])) == pytest.approx(50.0)
    assert parse_metric("top1").score(scores, [np.array([[0.6, 0.4], [0.8, 0.2]])]) == pytest.approx(50.0)
