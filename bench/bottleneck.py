"""Do the bottleneck budgets pay what they promise? `--bottleneck macs=0.5` and `time=0.5` per model.

For ResNet-18, ResNet-50, VGG-16 and DenseNet-121 (untrained zoo weights; the speed does not depend
on them): the default passes, then the same with `macs=0.5` and with `time=0.5`. Each variant's MACs
come from `deploykit inspect`; its batch-1 latency is measured in ONNX Runtime (CPU, level ALL), a
fresh process per timing, the variants of one model interleaved round by round. The speed-up is the
default model's median latency over the variant's, and "of the MAC cut" divides it by the MAC ratio:
the goal is at least 0.9 under macs=0.5, and time=0.5 within 10% of 2.0x.

Writes bench/BOTTLENECK.md.

    python bench/bottleneck.py [--models resnet18,resnet50,vgg16,densenet121] [--rounds 7] [--iterations 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_line, time_onnx  # noqa: E402

from deploykit import export  # noqa: E402
from deploykit.errors import DeploykitError  # noqa: E402
from deploykit.analysis import inspect_model  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402

OUT = Path(__file__).parent / "BOTTLENECK.md"
SPECS = ("macs=0.5", "time=0.5")


def _note(report, *needles) -> str:
    notes = next(p for p in report.passes if p.name == "bottleneck").notes
    return "; ".join(n for n in notes if any(k in n for k in needles))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50,vgg16,densenet121")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    table, notes = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for model in args.models.split(","):
            raw = tmp / f"{model}.onnx"
            export(model, raw)
            variants = {"default passes": tmp / f"{model}_default.onnx"}
            optimize_model(raw, variants["default passes"])
            for spec in SPECS:
                path = tmp / f"{model}_{spec.replace('=', '')}.onnx"
                try:
                    report = optimize_model(raw, path, bottleneck=spec)
                except DeploykitError as exc:
                    notes.append(f"{model} `{spec}`: refused: {exc}")
                    continue
                variants[spec] = path
                found = _note(report, "time budget:", "needs KxK ranks", "factorised")
                notes.append(f"{model} `{spec}`: {found}")
                print(f"{model} {spec}: {found}", flush=True)
            macs = {name: inspect_model(path).totals.macs for name, path in variants.items()}
            medians = interleaved_medians(variants, args.rounds, lambda p: time_onnx(p, (1, 3, 224, 224), args.iterations))
            base = "default passes"
            for name in variants:
                if name == base:
                    continue
                cut, speed = macs[base] / macs[name], medians[base] / medians[name]
                table.append(f"| {model} | `{name}` | {cut:.2f}x | {speed:.2f}x | {speed / cut:.2f} |")
                print(table[-1], flush=True)
    minutes = (time.perf_counter() - start) / 60
    lines = ["# Bottleneck budgets: speed against the MAC cut (`bench/bottleneck.py`)", "", machine_line(), "",
             f"One run, {minutes:.0f} minutes: batch 1, ONNX Runtime CPU (level ALL), {args.rounds} interleaved rounds x "
             f"{args.iterations} runs, a fresh process per timing; speed-up over the default passes on the same "
             "model. Goals: at least 0.9 of the MAC cut under `macs=0.5`; `time=0.5` within 10% of 2.0x.", "",
             "| model | budget | MAC cut | speed-up | of the MAC cut |", "| --- | --- | --- | --- | --- |",
             *table, "", "What the pass reported:", "", *[f"- {n}" for n in notes], ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
