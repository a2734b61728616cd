"""Which exporter should `deploykit export` use? Measured side by side in one run.

For each model: export time with the legacy TorchScript exporter and with the dynamo exporter
(optimiser on, and off), then ONNX Runtime (CPU, ORT_ENABLE_ALL) latency of each graph. Each ORT
measurement runs in its own subprocess so one session's thread pool cannot distort the next, and
rounds are interleaved so machine drift hits every variant alike.

    python bench/exporters.py [--models resnet18] [--rounds 5] [--out bench/EXPORTERS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved_medians, machine_line, time_onnx  # noqa: E402

def export_variant(model_name, variant, path):
    import torch

    from deploykit.zoo import load_zoo_model

    loaded = load_zoo_model(model_name)
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
    lines = ["# Exporter choice: measured", "", machine_line(),
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
            latencies = interleaved_medians({v: paths[v] for v in variants}, args.rounds,
                                    lambda p: time_onnx(p, (1, 3, 224, 224), args.iterations))
            base_export = statistics.median(export_times["torchscript"])
            base_lat = latencies["torchscript"]
            for v in variants:
                e, l = statistics.median(export_times[v]), latencies[v]
                lines.append(f"| {name} | {v} | {e:.2f} | {1e3 * l:.2f} | {base_export / e:.2f}x | {base_lat / l:.2f}x |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
