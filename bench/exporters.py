"""Which exporter should `deploykit export` use? Measured side by side in one run.

For each model: export time with the legacy TorchScript exporter and with the dynamo exporter
(optimiser on, and off), then ONNX Runtime (CPU, ORT_ENABLE_ALL) latency of each graph. Each ORT
measurement runs in its own subprocess so one session's thread pool cannot distort the next, and
rounds are interleaved so machine drift hits every variant alike.

    python bench/exporters.py [--models resnet18] [--rounds 5] [--out bench/EXPORTERS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

_TIMER = r"""
import json, sys, time, numpy as np, onnxruntime as ort
path, batch, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
shape = [batch] + [d if isinstance(d, int) else 224 for d in inp.shape[1:]]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
for _ in range(3): s.run(None, {inp.name: x})
t = []
for _ in range(iters):
    a = time.perf_counter(); s.run(None, {inp.name: x}); t.append(time.perf_counter() - a)
print(json.dumps(t))
"""


def export_variant(model_name, variant, path):
    import torch

    from deploykit.zoo import load_model

    loaded = load_model(model_name)
    x = torch.randn(loaded.input_shape)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "torchscript":
            torch.onnx.export(loaded.module, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        else:
            prog = torch.onnx.export(loaded.module, (x,), dynamo=True, opset_version=17,
                                     input_names=["input"], output_names=["output"],
                                     dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                                     optimize=(variant == "dynamo"), verbose=False)
            prog.save(str(path))
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).with_name("EXPORTERS.md")))
    args = ap.parse_args()
    variants = ["torchscript", "dynamo", "dynamo-no-optimize"]
    lines = ["# Exporter choice: measured", "",
             f"Machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
             f"Python {platform.python_version()}; "
             f"torch {__import__('torch').__version__}, onnxruntime {__import__('onnxruntime').__version__}.",
             f"Command: `python bench/exporters.py --models {args.models} --rounds {args.rounds}`", "",
             "| model | exporter | export time (median s) | ORT latency bs1 (median ms) | export speed vs torchscript | ORT speed vs torchscript |",
             "| --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            export_times = {v: [] for v in variants}
            paths = {v: Path(tmp) / f"{name}-{v}.onnx" for v in variants}
            for _ in range(max(1, args.rounds // 2)):
                for v in variants:
                    export_times[v].append(export_variant(name, v, paths[v]))
            latencies = {v: [] for v in variants}
            for _ in range(args.rounds):
                for v in variants:
                    out = subprocess.run([sys.executable, "-c", _TIMER, str(paths[v]), "1", str(args.iterations)],
                                         check=True, capture_output=True, text=True).stdout
                    latencies[v] += json.loads(out)
            base_export = statistics.median(export_times["torchscript"])
            base_lat = statistics.median(latencies["torchscript"])
            for v in variants:
                e, l = statistics.median(export_times[v]), statistics.median(latencies[v])
                lines.append(f"| {name} | {v} | {e:.2f} | {1e3 * l:.2f} | {base_export / e:.2f}x | {base_lat / l:.2f}x |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
