"""One measurement in its own process: `python -m deploykit.bench_worker SPEC_JSON` prints a JSON result.

A fresh process per (model, backend, batch) keeps one runtime's thread pool, allocator and peak
memory out of the next one's figures.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that across execve, so a worker
    started from a large parent would report the parent's size. VmHWM belongs to this address space."""
    from deploykit.memory import proc_kib_field

    found = proc_kib_field("/proc/self/status", "VmHWM")
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def runner_precision(runner, artefact) -> str:
    """What the heavy layers run in: the runner's stated precision (OpenVINO), else read off the ONNX graph."""
    stated = getattr(runner, "precision", None)
    if stated:
        return {"f32": "fp32"}.get(stated, stated)
    if not str(artefact).endswith(".onnx"):
        return "fp32"
    import onnx

    graph = onnx.load(str(artefact), load_external_data=False).graph
    if any(n.op_type in ("QuantizeLinear", "QLinearConv", "MatMulInteger", "ConvInteger") for n in graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


def gpu_memory_used(index: int = 0) -> int | None:
    """Bytes in use on GPU `index` as NVML reports them (every allocator's, any process's), or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    except pynvml.NVMLError:
        return None


def measure(spec: dict) -> dict:
    import numpy as np  # noqa: F401  (imported before the baseline so it is not counted as the model's)
    import onnxruntime  # noqa: F401

    from deploykit.backends import BuildOptions, get_backend
    from deploykit.backends.base import random_feeds
    from deploykit.timing import latencies as timed

    if spec["backend"] == "torch":
        import torch  # noqa: F401
    name, _, precision = spec["backend"].partition(":")
    if name == "ov-cpu":
        import openvino  # noqa: F401
    baseline = _rss()
    backend = get_backend(name)
    device_used = [gpu_memory_used() if backend.device == "cuda" else None]
    options = BuildOptions(lean_memory=spec.get("lean_memory", False))
    start = time.perf_counter()
    if precision:
        runner = backend.runner(spec["artefact"], options, threads=spec.get("threads"), precision=precision)
    else:
        runner = backend.runner(spec["artefact"], options, threads=spec.get("threads"))
    feeds = random_feeds(runner, spec["batch"], spec.get("input_shape"))
    runner.infer(feeds)
    warmup_s = time.perf_counter() - start  # session creation + first call
    split = []

    def keep_split():
        if runner.timings():
            split.append(runner.timings())
        if device_used[0] is not None:
            device_used.append(gpu_memory_used())

    iterations, duration = spec.get("iterations"), spec.get("duration")
    loop = {"runs": iterations} if iterations is not None else {"runs": 5, "seconds": duration or 3.0}
    for _ in range(spec.get("warmup", 20)):
        runner.infer(feeds)
    loop_start = time.perf_counter()  # wall_s covers the timed runs only: throughput is counted over it
    latencies = timed(lambda: runner.infer(feeds), warmup=0, after=keep_split,
                      **loop)  # the same inputs every iteration (reported)
    wall = time.perf_counter() - loop_start
    peak = peak_rss()
    result = {"latencies_s": latencies, "wall_s": wall, "warmup_s": warmup_s, "peak_rss_bytes": peak,
              "baseline_rss_bytes": baseline, "inputs_reused": True,
              "precision": runner_precision(runner, spec["artefact"])}
    if split:
        result["device_split_ms"] = {k: sum(s[k] for s in split) / len(split) for k in split[0]}
    if backend.device == "cuda" and device_used[0] is not None:
        # NVML's view of the device (ORT's CUDA allocator never shows in torch's): the most used while the model ran,
        # less what was in use before it loaded.
        result["device_peak_bytes"] = max(device_used[1:], default=device_used[0]) - device_used[0]
    runner.close()
    return result


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        print(json.dumps(measure(spec)))
    except Exception as exc:  # the parent reports it as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}))
        sys.exit(3)
