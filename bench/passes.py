"""Does each `deploykit optimize` pass pay off? Measured side by side in one run, on ONNX Runtime (CPU).

ResNet-18 at batch 1 (and 8): the raw export, the default passes (cleanup + fold + fuse), the fused
model with ORT's own graph optimisations off (with and without --ort-layout), int8 for the ORT target (uint8 activations) and with
TensorRT's symmetric int8 activations, low-rank bottlenecks at r = Cin/2 and Cin/4, and fp16.
VGG-16: FC->CONV sliding over a 384x384 image in one pass against evaluating its 36 crops.

    python bench/passes.py [--rounds 5] [--iterations 20] [--out bench/PASSES.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_line, time_onnx  # noqa: E402

from deploykit import export  # noqa: E402
from deploykit.analysis import inspect_model  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402


def resnet_variants(tmp: Path):
    raw = tmp / "resnet18.onnx"
    export("resnet18", raw)
    calib = tmp / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32))
    out = {"raw export": (raw, "ORT_ENABLE_ALL")}

    def make(name, level="ORT_ENABLE_ALL", **options):
        path = tmp / (name.replace(" ", "_").replace("/", "_") + ".onnx")
        report = optimize_model(raw, path, **options)
        out[name] = (path, level)
        return report

    make("default passes")
    out["default passes, ORT optimisations off"] = (tmp / "default_passes.onnx", "ORT_DISABLE_ALL")
    out["raw export, ORT optimisations off"] = (raw, "ORT_DISABLE_ALL")
    make("default passes + --ort-layout, ORT optimisations off", level="ORT_DISABLE_ALL", ort_layout=True)
    notes = {}
    r = make("int8 (ORT: uint8 activations)", int8=True, calibration=str(calib))
    notes["int8 (ORT: uint8 activations)"] = [n for p in r.passes for n in p.notes if "run in int8" in n]
    r = make("int8 (symmetric int8 activations)", int8=True, calibration=str(calib), target="tensorrt", fuse=False)
    make("bottleneck ratio=0.5", bottleneck="ratio=0.5")
    make("bottleneck ratio=0.25", bottleneck="ratio=0.25")
    make("fp16", fp16=True)
    return out, notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).with_name("PASSES.md")))
    args = ap.parse_args()
    lines = ["# Optimisation passes: measured", "", machine_line(),
             f"Command: `python bench/passes.py --rounds {args.rounds} --iterations {args.iterations}`. "
             "Each figure is the median over interleaved rounds, each timing in a fresh process; "
             "ratios compare variants measured in this same run.", ""]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        variants, notes = resnet_variants(tmp)
        # The --ort-layout model holds ORT-internal ops that inspect cannot follow; the pass keeps every layer.
        macs = {name: inspect_model(variants["default passes"][0] if "ort-layout" in name else path,
                                    (1, 3, 224, 224)).totals.macs for name, (path, _) in variants.items()}
        for batch in (1, 8):
            med = interleaved_medians(variants, args.rounds,
                              lambda spec: time_onnx(spec[0], (batch, 3, 224, 224), args.iterations, spec[1]))
            base = med["raw export"]
            lines += [f"## ResNet-18, batch {batch}", "",
                      "| variant | ORT level | median ms | speed-up vs raw export (ALL) | MACs | MAC reduction |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for name, (path, level) in variants.items():
                lines.append(f"| {name} | {level.replace('ORT_', '')} | {1e3 * med[name]:.2f} | {base / med[name]:.2f}x | "
                             f"{macs[name] / 1e9:.3f}G | {macs['raw export'] / macs[name]:.2f}x |")
            lines.append("")
        for name, n in notes.items():
            lines.append(f"{name}: {'; '.join(n)}")
        lines.append("")
        lines += sliding(tmp, args)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


def sliding(tmp: Path, args) -> list[str]:
    """VGG-16 at 384x384: one pass of the converted net vs the original on all 36 crops (one batch)."""
    from deploykit.slide import crops, evaluate_crops, slide, sliding_model

    raw = tmp / "vgg16.onnx"
    export("vgg16", raw)
    converted = tmp / "vgg16_fc.onnx"
    optimize_model(raw, converted, fc_to_conv=True)
    one_pass = inspect_model(converted, (1, 3, 384, 384)).totals.macs
    per_crop = inspect_model(raw, (1, 3, 224, 224)).totals.macs
    image = np.random.default_rng(0).standard_normal((1, 3, 384, 384)).astype(np.float32)
    n_crops = len(crops(image, (224, 224), 32))
    rounds = max(2, args.rounds // 2)
    med = interleaved_medians({"slide": (converted, (1, 3, 384, 384)), "crops": (raw, (n_crops, 3, 224, 224))}, rounds,
                      lambda spec: time_onnx(spec[0], spec[1], 3))
    sm = sliding_model(converted)
    start = time.perf_counter()
    scores = slide(sm, image)
    _ = time.perf_counter() - start
    reference = evaluate_crops(raw, image, (224, 224), 32)
    deviation = float(np.abs(scores - reference).max() / (reference.max() - reference.min()))
    mac_ratio = n_crops * per_crop / one_pass
    speedup = med["crops"] / med["slide"]
    return ["## FC->CONV: VGG-16 over a 384x384 image", "",
            "| variant | median ms | MACs | |", "| --- | --- | --- | --- |",
            f"| original, {n_crops} crops of 224x224 in one batch | {1e3 * med['crops']:.0f} | {n_crops * per_crop / 1e9:.1f}G | |",
            f"| converted, one pass (6x6 score map) | {1e3 * med['slide']:.0f} | {one_pass / 1e9:.1f}G | |", "",
            f"Speed-up {speedup:.2f}x for a MAC ratio of {mac_ratio:.2f}x ({speedup / mac_ratio:.2f} of it). "
            f"Largest difference between the map and the crops: {deviation:.2%} of the score range "
            "(VGG-16 zero-pads its convolutions; see README)."]


if __name__ == "__main__":
    main()
