"""Shared measurement for the bench/ scripts: deploykit.timing's fresh process per timing and interleaved
rounds (the loop the bottleneck pass's time= check uses too). Figures are medians; ratios are taken
between variants measured in the same run.
"""

from __future__ import annotations

import os
import platform

from deploykit.timing import interleaved, median, time_in_fresh_process


def time_onnx(path, shape, iterations=20, level="ORT_ENABLE_ALL") -> list[float]:
    """Latencies (s) of `iterations` runs of the model at `path` on one input of `shape`, in a fresh process."""
    return time_in_fresh_process(path, shape=shape, runs=iterations, level=level)


def interleaved_medians(variants: dict, rounds: int, measure) -> dict[str, float]:
    """Median of measure(variant) over `rounds` interleaved rounds, per variant name."""
    return {name: median(samples) for name, samples in interleaved(variants, rounds, measure).items()}


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
