"""Plain int8 against int8 under the accuracy budget, per model: what the budget buys and what it costs.

For each model: int8 with no budget (run with --max-accuracy-drop 100 so that the same figures are
reported), then int8 under the budget; the accuracy (labelled digits) or top-1 agreement with the
float model on the validation set, the nodes kept in float, the search's wall time and number of
trial quantizations, and the batch-1 speed of each against the fp32 model, all measured in this run
(fresh process per timing, interleaved rounds, ONNX Runtime on the CPU). For the PP-OCR models,
rapidocr's own pipeline reads a rendered page with the budgeted model swapped in, the others float.
The digits model also gets the stacked `--bottleneck macs=0.3 --int8` under one budget.

Writes the section between the budget markers of bench/REALMODELS.md (bench/realmodels.py keeps it).

    python bench/budget.py [--rounds 3] [--iterations 20] [--skip-resnet50]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _timing import interleaved_medians, machine_line, time_onnx  # noqa: E402

from deploykit import export  # noqa: E402
from deploykit.errors import DeploykitError  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402

REALMODELS = ROOT / "bench" / "REALMODELS.md"
START, END = "<!-- budget:start -->", "<!-- budget:end -->"
BLOCKS = ROOT / "tests" / "models" / "blocks.py"


def corpus(tmp: Path, with_resnet50: bool):
    """(name, model, input shape, calibration, validation, budget) for every model."""
    from test_ppocr import CLS, DET, LINES, REC, SHAPES, _normalized, render

    rng = np.random.default_rng(0)
    out = []
    digits = tmp / "digits.onnx"
    export("digits", digits)
    out.append(("digits (trained)", digits, (1, 1, 8, 8), "digits", "digits", 0.5))
    for name in ("mobilenet_v3_like", "efficientnet_like"):
        path = tmp / f"{name}.onnx"
        export(f"{BLOCKS}:{name}", path, input_shape=(1, 3, 32, 32))
        cal, val = tmp / f"{name}_cal.npy", tmp / f"{name}_val.npy"
        np.save(cal, rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
        np.save(val, rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
        out.append((name, path, (1, 3, 32, 32), str(cal), str(val), 1.0))
    if with_resnet50:
        path = tmp / "resnet50.onnx"
        export("resnet50", path)
        cal, val = tmp / "r50_cal.npy", tmp / "r50_val.npy"
        np.save(cal, rng.standard_normal((16, 3, 224, 224)).astype(np.float32))
        np.save(val, rng.standard_normal((32, 3, 224, 224)).astype(np.float32))
        out.append(("ResNet-50 (untrained)", path, (1, 3, 224, 224), str(cal), str(val), 1.0))
    pages = [render(rng.permutation(LINES)[:3].tolist()) for _ in range(6)]
    strips = [render([line], width=40 + 20 * len(line)) for line in LINES]
    for kind, model, images in (("det", DET, pages), ("cls", CLS, strips), ("rec", REC, strips)):
        shape = SHAPES[kind]
        data = tmp / f"ppocr_{kind}.npy"
        np.save(data, np.stack([_normalized(im, shape[2], shape[3]) for im in images]))
        out.append((f"PP-OCR {kind}", model, shape, str(data), str(data), 1.0))
    return out


def _score(report) -> float | None:
    last = report.passes[-1]
    if last.accuracy_after is not None:
        return 100.0 * last.accuracy_after
    return None if last.top1_agreement is None else 100.0 * last.top1_agreement


def _kept(report) -> str:
    if report.passes[-1].name != "int8":
        return "-"
    for note in report.passes[-1].notes:
        m = re.search(r"kept (\d+) of (\d+) layer", note)
        if m:
            return f"{m.group(1)} of {m.group(2)}"
    return "0"


def _trials(report) -> int:
    for note in report.passes[-1].notes:
        m = re.search(r"\((\d+) trial quantization", note)
        if m:
            return int(m.group(1))
    return 0


def _lines(kind: str, variant: Path, pages, originals) -> str:
    from test_ppocr import CLS, DET, REC, line_agreement

    models = {"det": DET, "cls": CLS, "rec": REC, kind: variant}
    same, same_words, total = line_agreement(models, pages, originals)
    return f"{same}/{total} ({same_words}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    from test_ppocr import CLS, DET, REC, _read, held_out_pages

    pages = held_out_pages(20)
    originals = [_read(DET, CLS, REC, page) for page in pages]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, model, shape, cal, val, budget in corpus(tmp, not args.skip_resnet50):
            variants = {"fp32": model}
            results = {}
            runs = [("plain int8", dict(int8=True, max_accuracy_drop=100.0)),
                    (f"int8, budget {budget:g}", dict(int8=True, max_accuracy_drop=budget))]
            if name.startswith("digits"):
                runs.append(("bottleneck macs=0.3 + int8, budget 1",
                             dict(int8=True, bottleneck="macs=0.3", max_accuracy_drop=1.0)))
            if name.startswith("PP-OCR"):
                # The control: how far a nearly exact precision moves rapidocr's lines.
                runs.insert(0, ("fp16 (control)", dict(fp16=True)))
            float_score = None
            for label, options in runs:
                out = tmp / f"{abs(hash((name, label)))}.onnx"
                start = time.perf_counter()
                try:
                    report = optimize_model(model, out, input_shape=shape, calibration=cal, validate=val, **options)
                except DeploykitError as exc:
                    results[label] = {"refused": str(exc)}
                    continue
                seconds = time.perf_counter() - start
                last = report.passes[-1]
                float_score = 100.0 * last.accuracy_before if last.accuracy_before is not None else 100.0
                results[label] = {"score": _score(report), "kept": _kept(report), "seconds": seconds,
                                  "trials": _trials(report), "path": out}
                if name.startswith("PP-OCR"):
                    results[label]["lines"] = _lines(name.split()[-1], out, pages, originals)
                variants[label] = out
                print(f"{name} / {label}: {results[label]}", flush=True)
            medians = interleaved_medians(variants, args.rounds, lambda p: time_onnx(p, shape, args.iterations))
            for label, r in results.items():
                if "refused" not in r:
                    r["speed"] = medians["fp32"] / medians[label]
            rows.append((name, float_score, results))
    metric = lambda name: "accuracy" if name.startswith("digits") else "top-1 agreement"  # noqa: E731
    lines = [START, "", "## int8 under the accuracy budget (`bench/budget.py`)", "", machine_line(), "",
             "Score: accuracy on the labelled digits test split, else top-1 agreement with the float model on the "
             "validation set (per pixel as foreground IoU for the detector's map, per step for the recogniser). "
             "Kept in float: nodes the search returned to float, of those the quantizer touched. Search: wall time "
             "of the whole `optimize` and the trial quantizations it ran. Speed: batch-1 latency of the fp32 model "
             "over the variant's, ONNX Runtime CPU, measured side by side in this run "
             f"({args.rounds} interleaved rounds x {args.iterations} runs, fresh process each). Lines: rapidocr's "
             f"own pipeline on {len(pages)} rendered 5-line pages none of the sets holds, with this variant in place "
             "of one model and the other two float: lines identical to the all-float pipeline's, and in brackets "
             "identical once whitespace is removed. fp16 is the control: this recogniser's spaces follow the "
             "crop's exact size, and a text box one pixel taller or shorter (fp16's detector moves some too) "
             "adds or drops a space.", "",
             "| model | float | variant | score | kept in float | optimize time (trials) | speed vs fp32 | lines |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, float_score, results in rows:
        for label, r in results.items():
            if "refused" in r:
                lines.append(f"| {name} | | {label} | refused: {r['refused']} | | | | |")
                continue
            score = "-" if r["score"] is None else f"{r['score']:.2f}%"
            base = "-" if float_score is None else f"{float_score:.2f}% ({metric(name)})"
            lines.append(f"| {name} | {base} | {label} | {score} | {r['kept']} | {r['seconds']:.0f} s "
                         f"({r['trials']}) | {r['speed']:.2f}x | {r.get('lines', '')} |")
    lines += ["", END]
    section = "\n".join(lines)
    text = REALMODELS.read_text() if REALMODELS.exists() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REALMODELS.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
