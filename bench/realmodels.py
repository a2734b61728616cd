"""The real-model corpus, pass by pass: verdict, deviation and top-1 agreement on validation data, and speed.

Models: the hand-written blocks in tests/models/blocks.py (MobileNet-, ShuffleNet-, ConvNeXt- and
ViT-style, exported here at 1x3x64x64, the ViT at its 1x3x32x32) and the three PP-OCR models inside rapidocr-onnxruntime
(detector at 1x3x320x640, classifier 1x3x48x192, recogniser 1x3x48x320) on text rendered with PIL.
Each model x pass goes through `optimize_model` with --validate data; the speed ratio against the
raw export is measured in the same run (fresh process per timing, interleaved rounds, ORT on the CPU).

    python bench/realmodels.py [--rounds 3] [--iterations 20] [--out bench/REALMODELS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _timing import interleaved_medians, machine_line, time_onnx  # noqa: E402

from deploykit import DeploykitError, export  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402

BLOCKS = ROOT / "tests" / "models" / "blocks.py"
HAND = ["mobilenet_like", "shufflenet_like", "convnext_like", "vit_like"]
PASSES = {"default": {}, "fp16": {"fp16": True}, "int8": {"int8": True}, "bottleneck energy=0.9": {"bottleneck": "energy=0.9"}}


def corpus(tmp: Path):
    """(name, onnx path, input shape, validation/calibration .npy) for every model."""
    from test_ppocr import CLS, DET, LINES, REC, SHAPES, _normalized, render

    rng = np.random.default_rng(0)
    out = []
    for name in HAND:
        shape = (1, 3, 32, 32) if name == "vit_like" else (1, 3, 64, 64)  # the ViT's position table is for 32x32
        path = tmp / f"{name}.onnx"
        export(f"{BLOCKS}:{name}", path, input_shape=shape)
        data = tmp / f"{name}.npy"
        np.save(data, rng.standard_normal((16, *shape[1:])).astype(np.float32))
        out.append((name, path, shape, data))
    pages = [render(rng.permutation(LINES)[:3].tolist()) for _ in range(8)]
    strips = [render([line], width=40 + 20 * len(line)) for line in LINES]
    for kind, model, images in (("PP-OCR det", DET, pages), ("PP-OCR cls", CLS, strips), ("PP-OCR rec", REC, strips)):
        shape = SHAPES[kind.split()[-1]]
        data = tmp / f"{kind.replace(' ', '_')}.npy"
        np.save(data, np.stack([_normalized(im, shape[2], shape[3]) for im in images]))
        out.append((kind, model, shape, data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "REALMODELS.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, model, shape, data in corpus(tmp):
            variants = {"raw": model}
            for label, options in PASSES.items():
                out = tmp / f"{name.replace(' ', '_')}_{label.split()[0]}.onnx"
                opts = dict(options)
                if opts.get("int8"):
                    opts["calibration"] = str(data)
                try:
                    report = optimize_model(model, out, input_shape=shape, validate=str(data), **opts)
                except DeploykitError as exc:
                    rows.append((name, label, f"refused: {exc}", None, None, None, None))
                    continue
                last = report.passes[-1]
                worst = max(report.passes, key=lambda p: p.max_rel)
                rows.append((name, label, "ok", worst.max_rel, last.top1_agreement, report.noise_floor, out))
                variants[label] = out
                print(f"{name} / {label}: max rel {worst.max_rel:.2e}, top-1 {last.top1_agreement}", flush=True)
            medians = interleaved_medians(variants, args.rounds, lambda p: time_onnx(p, shape, args.iterations))
            for i, row in enumerate(rows):
                if row[0] == name and row[6] is not None:
                    rows[i] = row[:6] + (medians["raw"] / medians[row[1]],)
    lines = ["# deploykit on real models", "", machine_line(), "",
             "Every model x pass ran through `deploykit.optimize_model` with `--validate` data (random N(0,1) "
             "images for the hand-built nets, text rendered with PIL and normalised as rapidocr does for the PP-OCR "
             "models; int8 calibrated on the same set). Deviation: the largest max|diff|/max|reference| over the "
             "passes, against the input model. Speed: median latency of the raw export / of the result, batch 1, "
             "ONNX Runtime CPU at ORT_ENABLE_ALL, measured side by side in one run "
             f"({args.rounds} interleaved rounds x {args.iterations} runs, fresh process each).", "",
             "| model | pass | verdict | max rel deviation | top-1 agreement | speed vs raw |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, label, verdict, dev, agree, _noise, speed in rows:
        lines.append(f"| {name} | {label} | {verdict} | {'-' if dev is None else f'{dev:.2e}'} | "
                     f"{'-' if agree is None else f'{agree:.1%}'} | {'-' if speed is None or isinstance(speed, Path) else f'{speed:.2f}x'} |")
    lines += ["", "Top-1 agreement is over the class axis of the first output (per pixel for maps, per step for the "
              "recogniser); the detector's one-channel probability map has none ('-')."]
    out = Path(args.out)
    text = "\n".join(lines) + "\n"
    old = out.read_text() if out.exists() else ""
    if "<!-- budget:start -->" in old:  # bench/budget.py's section is its own: kept as it is
        text += "\n" + old[old.index("<!-- budget:start -->"):old.index("<!-- budget:end -->")] + "<!-- budget:end -->\n"
    out.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
