"""Shared measurement for the bench/ scripts: one fresh subprocess per timing, interleaved rounds.

A fresh process per measurement keeps one ONNX Runtime session's thread pool and allocator from
distorting the next; interleaving the variants round by round spreads the machine's drift over all
of them alike. Figures are medians; ratios are taken between variants measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

_TIMER = r"""
import json, sys, time, numpy as np, onnxruntime as ort
path, shape, iters, level = sys.argv[1], [int(v) for v in sys.argv[2].split(",")], int(sys.argv[3]), sys.argv[4]
opts = ort.SessionOptions()
opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
opts.log_severity_level = 3
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
for _ in range(3):
    s.run(None, {inp.name: x})
t = []
for _ in range(iters):
    a = time.perf_counter(); s.run(None, {inp.name: x}); t.append(time.perf_counter() - a)
print(json.dumps(t))
"""


def time_onnx(path, shape, iterations=20, level="ORT_ENABLE_ALL") -> list[float]:
    """Latencies (s) of `iterations` runs of the model at `path` on one input of `shape`, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _TIMER, str(path), ",".join(map(str, shape)), str(iterations), level],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def interleaved(variants: dict, rounds: int, measure) -> dict[str, float]:
    """Median of measure(variant) over `rounds` interleaved rounds, per variant name."""
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, spec in variants.items():
            samples[name] += measure(spec)
    return {name: statistics.median(v) for name, v in samples.items()}


def machine_line() -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}.")
