"""How deploykit times a model: one loop, and one fresh process per measurement where figures are compared.

Every latency deploykit reports or decides on comes from `latencies` (the loop: warm-up runs, then
timed runs until both a count and a duration are reached). Figures that are compared with each other
(the bottleneck pass's time= check, the bench/ scripts) are taken by `time_in_fresh_process`, one ONNX
Runtime session per process, with the variants taking turns round by round (`interleaved`) so that
the machine's drift falls on all of them alike. A fresh process, because the calling one is not a
clean place to time: one that has just exported with torch, or that holds a second session whose
spinning threads compete, reads a different figure for the same model.

    python -m deploykit.timing MODEL (--feeds FEEDS.npz | --shape 1,3,224,224) [--seconds S] [--runs N]
                               [--level ORT_ENABLE_ALL]
prints the latencies in seconds, one per line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Callable


def latencies(run: Callable[[], object], *, warmup: int = 3, runs: int = 3, seconds: float = 0.0,
              after: Callable[[], object] | None = None,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each timed call of `run`, after `warmup` untimed ones: at least `runs` calls, and
    more until `seconds` have passed. `after` runs after each timed call, outside the timing. `clock`
    (seconds, monotonic) is injectable so that the loop's logic can be tested without a timer."""
    for _ in range(warmup):
        run()
    times, start = [], clock()
    while len(times) < runs or clock() - start < seconds:
        t = clock()
        run()
        times.append(clock() - t)
        if after is not None:
            after()
    return times


def median(values) -> float:
    return float(statistics.median(values))


def time_in_fresh_process(model, *, feeds=None, shape=None, seconds: float = 0.0, runs: int = 3,
                          level: str = "ORT_ENABLE_ALL") -> list[float]:
    """Latencies of the ONNX model at `model` in ONNX Runtime on the CPU (spin-waiting on, as Engine and
    bench run it), in a new process: on the inputs saved in the .npz `feeds`, or on one random input
    of `shape` (float16 where the model takes float16)."""
    from .errors import DeploykitError

    args = [sys.executable, "-m", "deploykit.timing", str(model), "--seconds", str(seconds), "--runs", str(runs),
            "--level", level]
    args += ["--feeds", str(feeds)] if feeds is not None else ["--shape", ",".join(map(str, shape))]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeploykitError(f"timing {model} in a fresh process failed: {last}")
    return [float(v) for v in done.stdout.split()]


def interleaved(variants: dict, rounds: int, measure: Callable) -> dict[str, list[float]]:
    """Every sample of measure(variant) over `rounds` rounds, the variants taking turns in each round."""
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, spec in variants.items():
            samples[name] += measure(spec)
    return samples


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploykit.timing")
    parser.add_argument("model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--feeds")
    source.add_argument("--shape")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--runs", type=int, default=3)
    from .ort_session import OPT_LEVELS, new_session

    by_ort_name = {full: short for short, full in OPT_LEVELS.items()}  # the flag takes ORT's own level names
    parser.add_argument("--level", default="ORT_ENABLE_ALL", choices=sorted(by_ort_name))
    args = parser.parse_args()

    import numpy as np

    session = new_session(args.model, optimization=by_ort_name[args.level])
    if args.feeds:
        feeds = dict(np.load(args.feeds))
    else:
        first = session.get_inputs()[0]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        shape = [int(v) for v in args.shape.split(",")]
        feeds = {first.name: np.random.default_rng(0).standard_normal(shape).astype(dtype)}
    print("\n".join(map(str, latencies(lambda: session.run(None, feeds), runs=args.runs, seconds=args.seconds))))


if __name__ == "__main__":
    _main()
