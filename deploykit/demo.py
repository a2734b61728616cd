"""`make demo`: the main job on the embedded default (ONNX Runtime on the CPU), end to end.

1. export the trained digits CNN and ResNet-18 from the zoo, each proven against PyTorch;
2. inspect ResNet-18: parameters, MACs, activation memory summed vs peak live;
3. run both through Engine: the digits test set (accuracy vs PyTorch's) and a ResNet-18 batch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main(out_dir: str = "out") -> int:
    from deploykit import Engine, export, inspect_model
    from deploykit.errors import DeploykitError

    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    try:
        print("== 1. export (each checked in ONNX Runtime against PyTorch)")
        for name in ("digits", "resnet18"):
            r = export(name, out / f"{name}.onnx")
            print(f"  {name:<9} -> {r.path}  {r.seconds:.2f} s, max rel error {r.max_rel:.1e} at batch "
                  f"{' and '.join(str(c.input_shape[0]) for c in r.checks)}")

        print("== 2. inspect resnet18.onnx")
        rep = inspect_model(out / "resnet18.onnx")
        t = rep.totals
        print(f"  {len(rep.layers)} nodes, {t.params:,} parameters ({t.param_bytes / 2**20:.1f} MiB), "
              f"{t.macs / 1e9:.2f} GMACs")
        print(f"  activations kept for training: {t.activation_bytes / 2**20:.1f} MiB; peak live at inference: "
              f"{t.peak_activation_bytes / 2**20:.1f} MiB ({t.activation_bytes / t.peak_activation_bytes:.1f}x less)")
        print(f"  {len(rep.warnings)} geometry warning(s), e.g. {rep.warnings[0] if rep.warnings else '-'}")

        print("== 3. Engine")
        from deploykit_zoo.digits_data import load_digits_split

        _, _, x_test, y_test = load_digits_split()
        engine = Engine(out / "digits.onnx")
        logits = engine(x_test)
        acc = float((logits.argmax(1) == y_test).mean())
        torch_acc = _torch_digits_accuracy(x_test, y_test)
        print(f"  digits: providers {engine.providers}; test accuracy {acc:.2%} on {len(y_test)} real images "
              f"(PyTorch: {torch_acc:.2%})")
        engine = Engine(out / "resnet18.onnx")
        batch = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
        engine(batch)  # first call allocates
        start = time.perf_counter()
        y = engine(batch)
        print(f"  resnet18: batch of 8 -> logits {y.shape} in {1e3 * (time.perf_counter() - start):.0f} ms")
        try:
            engine(batch[:, :, :200])
        except DeploykitError as exc:
            print(f"  a wrong shape is refused with: {exc}")
    except DeploykitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("demo done: artefacts in", out.resolve())
    return 0


def _torch_digits_accuracy(x, y) -> float:
    import torch

    from deploykit.zoo import load_zoo_model

    module = load_zoo_model("digits").module
    with torch.inference_mode():
        pred = module(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


if __name__ == "__main__":
    sys.exit(main())
