"""`--recipe fast` on the networks CPUs run and on trained models from packages: the whole candidate table.

For each model the recipe builds its int8 candidate under the accuracy budget, judges every candidate
(ORT fp32, OpenVINO f32 / bf16, int8 in each engine) in the engine that runs it, in the points of the
model's task metric, times them side by side at batch 1 (fresh process per timing, rounds interleaved)
and writes the winner. This script prints and writes the tables it reports, with the machine named.

Zoo networks are untrained: their rows measure speed (top-1 agreement on random inputs says little).
The trained ones are judged on real inputs: the PP-OCR recogniser (rapidocr-onnxruntime) on rendered
text lines with --metric ctc, the YOLOv8n detector inside the nudenet wheel on skimage's photographs
with --metric detection:iou=0.5:0.95.

    pip install -e '.[test,bench]'   # nncf for the comparison rows
    python bench/recipe.py [--models mobilenet_v2,...] [--out bench/RECIPE.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _timing import machine_line  # noqa: E402

from deploykit import export  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402

ZOO = ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2", "regnet_y_400mf"]


def _zoo(name, tmp):
    path = tmp / f"{name}.onnx"
    export(name, path)
    data = tmp / f"{name}.npy"
    np.save(data, np.random.default_rng(0).random((16, 3, 224, 224)).astype(np.float32))
    return path, data, None, None


def _recogniser(tmp):
    from test_ppocr import LINES, REC, SHAPES, _normalized, render

    shape = SHAPES["rec"]
    words = " ".join(LINES).split()
    rng = np.random.default_rng(0)
    texts = LINES + [" ".join(rng.permutation(words)[:4]) for _ in range(18)]
    strips = [_normalized(render([t], width=40 + 20 * len(t)), shape[2], shape[3]) for t in texts]
    data = tmp / "rec.npy"
    np.save(data, np.stack(strips).astype(np.float32))
    return Path(REC), data, shape, "ctc"


def _ppocr(kind, tmp):
    """The PP-OCR detector (pages of rendered text, mask-iou of its probability map) or classifier (text strips,
    top-1 agreement of its 0/180 degree decision), fed as rapidocr feeds them."""
    from test_ppocr import CLS, DET, LINES, SHAPES, _normalized, render

    shape = SHAPES[kind]
    rng = np.random.default_rng(0)
    if kind == "det":
        images = [render(rng.permutation(LINES)[:3].tolist()) for _ in range(8)]
    else:
        words = " ".join(LINES).split()
        texts = LINES + [" ".join(rng.permutation(words)[:4]) for _ in range(18)]
        images = [render([t], width=40 + 20 * len(t)) for t in texts]
    data = tmp / f"{kind}.npy"
    np.save(data, np.stack([_normalized(im, shape[2], shape[3]) for im in images]).astype(np.float32))
    return Path(DET if kind == "det" else CLS), data, shape, "mask-iou" if kind == "det" else "top1"


def _detector(tmp):
    from test_yolo import MODEL, letterboxed_photographs

    data = tmp / "yolo.npy"
    np.save(data, letterboxed_photographs())
    return Path(MODEL), data, (1, 3, 320, 320), "detection:iou=0.5:0.95"  # boxes that move cost too


def run(name, tmp):
    path, data, shape, metric = (_recogniser(tmp) if name == "ppocr_rec" else _detector(tmp) if name == "yolov8n"
                                 else _ppocr(name.removeprefix("ppocr_"), tmp) if name in ("ppocr_det", "ppocr_cls")
                                 else _zoo(name, tmp))
    start = time.perf_counter()
    out = tmp / f"{name}_fast.onnx"
    report = optimize_model(path, out, recipe="fast", calibration=str(data), validate=str(data), input_shape=shape,
                            metric=metric)
    seconds = time.perf_counter() - start
    extra = nncf_row(name, path, data, shape, metric, out, report.recipe, tmp) if metric is not None else []
    return report.recipe, seconds, extra


def nncf_row(name, source, data, shape, metric, winner_path, recipe, tmp) -> list[str]:
    """NNCF's post-training int8 (nncf.quantize on the OpenVINO model, the same calibration data) in OpenVINO,
    judged in OpenVINO in the same metric, and timed side by side with ORT fp32 and the recipe's winner."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return ["NNCF row: not measured (pip install nncf)", ""]
    from deploykit.choice import Candidate, judge_in_engine, time_side_by_side
    from deploykit.metrics import parse_metric
    from deploykit.signature import read_signature
    from deploykit.validation import AccuracyJudge, load_validation
    import onnx

    samples = np.load(data)
    model = ov.Core().read_model(str(source))
    if shape is not None:  # the dynamic dimensions other than the batch, as the recipe was given them
        model.reshape({model.inputs[0].get_any_name(): [-1, *shape[1:]]})
    quantized = nncf.quantize(model, nncf.Dataset([samples[i:i + 1] for i in range(len(samples))]))
    xml = tmp / f"{name}_nncf.xml"
    ov.save_model(quantized, str(xml))
    signature = read_signature(onnx.load(str(source), load_external_data=False))
    validation = load_validation(str(data), signature, signature.resolve(shape))
    judge = AccuracyJudge(str(source), validation, parse_metric(metric))
    rows = [Candidate("ort-cpu", "fp32", str(source)), Candidate("ov-cpu", "nncf-int8", str(xml)),
            # Its own label: timing is keyed by label, and the recipe may have written ORT fp32 itself.
            Candidate(recipe["engine"], recipe["precision"], str(winner_path), form="as written")]
    judge_in_engine(rows[1:2], judge)
    rows[0].drop = 0.0
    time_side_by_side(rows, shape)
    out = ["| second run, side by side | drop (points) | batch-1 latency | vs ORT fp32 | note |",
           "| --- | --- | --- | --- | --- |"]
    for c in rows:
        label = ("ORT fp32" if c is rows[0] else "NNCF quantize int8 in OpenVINO" if c is rows[1] else
                 f"the recipe's artefact ({c.engine} {c.precision}, as recorded)")
        drop = "-" if c.drop is None else f"{c.drop:.2f}"
        ms = "-" if c.latency_ms is None else f"{c.latency_ms:.2f} ms"
        speed = "-" if c.speedup is None else f"{c.speedup:.2f}x"
        note = c.verdict if c.verdict.startswith("cannot") else ("holds the budget" if c.drop is not None and
                                                                 c.drop <= recipe["accuracy_budget"] else
                                                                 "over the budget" if c.drop is not None else "")
        out.append(f"| {label} | {drop} | {ms} | {speed} | {note} |")
    return out + [""]


def table(name, recipe, seconds) -> list[str]:
    lines = [f"### {name}", "", f"metric: {recipe['metric']}; budget {recipe['accuracy_budget']:g} point(s); "
             f"int8 candidate: bottleneck {recipe['bottleneck'] or 'none'} + int8; whole recipe {seconds:.0f} s", "",
             "| candidate | drop (points) | batch-1 latency | vs ORT fp32 | verdict |", "| --- | --- | --- | --- | --- |"]
    for c in recipe["candidates"]:
        drop = "-" if c["drop"] is None else f"{c['drop']:.2f}"
        ms = "-" if c["latency_ms"] is None else f"{c['latency_ms']:.2f} ms"
        speed = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
        lines.append(f"| {c['label']} | {drop} | {ms} | {speed} | {c['verdict']} |")
    lines += [""] + [f"not compared: {n}" for n in recipe.get("not_compared", [])] + [""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(ZOO + ["ppocr_rec", "ppocr_det", "ppocr_cls", "yolov8n"]))
    parser.add_argument("--out", default=str(ROOT / "bench" / "RECIPE.md"))
    args = parser.parse_args()
    lines = ["# `--recipe fast`: the fastest artefact that holds the budget", "",
             f"{machine_line()} Generated by `python bench/recipe.py`; every ratio is measured side by side in one "
             "run (batch 1, fresh process per timing, candidates interleaved over 3 rounds, median). A difference "
             "within 5% is a tie, which goes to the more accurate candidate.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            recipe, seconds, extra = run(name, Path(tmp))
            block = table(name, recipe, seconds) + extra
            print("\n".join(block), flush=True)
            lines += block
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
