"""Peak RSS of every verb against the model's size: `python bench/memory.py` writes bench/MEMORY.md.

Each verb runs as its own process (the real CLI); its peak RSS is that process's VmHWM, read as it
exits. Not wait4's ru_maxrss: Linux carries that across fork and execve, so a child of a large
parent would report the parent's size.
The budget is 3x the model's weights on disk plus its activations (every tensor kept, at the batch
the verb verifies with: 4 random samples by default), as the real-models issue set it.

    python bench/memory.py [--models vgg16,resnet50] [--large]   # --large adds a 2.3 GB model (7 GB of disk)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VERIFY_BATCH = 4  # optimize's random verification samples (deploykit.validation)


_CHILD = """
import atexit, os
def _report():
    with open("/proc/self/status") as fh:
        hwm = next(l for l in fh if l.startswith("VmHWM:")).split()[1]
    with open(os.environ["DEPLOYKIT_MEMORY_REPORT"], "w") as out:
        out.write(hwm)
atexit.register(_report)
from deploykit.cli import main
main()
"""


def run_verb(args: list[str], env: dict) -> tuple[int, float, str]:
    """(peak RSS bytes, seconds, last stderr line) of `deploykit ARGS` in a fresh process."""
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".hwm") as report:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env={**env, "DEPLOYKIT_MEMORY_REPORT": report.name},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        lines = proc.stderr.strip().splitlines()
        if proc.returncode != 0:
            raise SystemExit(f"deploykit {' '.join(args)} failed: {lines[-1] if lines else proc.returncode}")
        return int(Path(report.name).read_text()) * 1024, seconds, lines[-1] if lines else ""


def model_bytes(path: Path) -> int:
    from deploykit.storage import model_files

    return sum(p.stat().st_size for p in model_files(path))


def large_model(folder: Path) -> Path:
    """The 2.3 GB Conv-BN-Relu-Gemm model of tests/test_large_models.py, built the same way."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_large_models import write_large_model

    return write_large_model(folder)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vgg16,resnet50")
    ap.add_argument("--large", action="store_true", help="also a 2.3 GB model with external data")
    ap.add_argument("--out", default=str(HERE / "MEMORY.md"))
    args = ap.parse_args()
    from deploykit.analysis import inspect_model
    from deploykit.machine import describe

    rows = []
    with tempfile.TemporaryDirectory(prefix="deploykit-memory-") as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "DEPLOYKIT_CACHE": str(tmp / "cache")}
        targets = []
        for name in args.models.split(","):
            onnx_path = tmp / f"{name}.onnx"
            rss, seconds, _ = run_verb(["export", name, "-o", str(onnx_path)], env)
            shape = None
            targets.append((name, onnx_path, shape, [("export", rss, seconds)]))
        if args.large:
            targets.append(("2.3 GB Gemm head", large_model(tmp), (1, 3, 8, 8), []))
        for name, path, shape, measured in targets:
            report = inspect_model(path, shape, weights=False)
            sample = tuple(report.input_shapes[next(iter(report.input_shapes))])
            shape_args = ["--input-shape", ",".join(map(str, sample))] if shape else []
            batch_shape = (VERIFY_BATCH, *sample[1:])
            activations = inspect_model(path, batch_shape, weights=False).totals.activation_bytes
            calib = tmp / f"{name.split()[0]}_calib.npy"
            np.save(calib, np.random.default_rng(0).standard_normal((8, *sample[1:])).astype(np.float32))
            verbs = [("inspect", ["inspect", str(path), *shape_args]),
                     ("optimize (default passes)", ["optimize", str(path), "-o", str(tmp / "opt.onnx"), *shape_args])]
            if not name.startswith("2.3"):
                verbs += [("optimize --fp16", ["optimize", str(path), "-o", str(tmp / "fp16.onnx"), "--fp16"]),
                          ("optimize --int8 (8 samples)", ["optimize", str(path), "-o", str(tmp / "int8.onnx"), "--int8",
                                                           "--calibration", str(calib)])]
            verbs += [("build ort-cpu", ["build", str(path), "--backend", "ort-cpu", "-o", str(tmp / "b.onnx")])]
            if not name.startswith("2.3"):
                verbs += [("build ov-cpu", ["build", str(path), "--backend", "ov-cpu", "-o", str(tmp / "b.xml")])]
            for label, verb in verbs:
                print(f"{name}: {label} ...", file=sys.stderr, flush=True)
                rss, seconds, _ = run_verb(verb, env)
                measured.append((label, rss, seconds))
            size = model_bytes(path)
            budget = 3 * size + activations
            for label, rss, seconds in measured:
                rows.append((name, size, activations, label, rss, seconds, budget))
            for f in tmp.glob("*"):
                if f.is_file() and f.name.startswith(("opt", "fp16", "int8", "b.")):
                    f.unlink()
    machine = describe()
    out = ["# Peak memory of every verb", "",
           f"Machine: {machine['cpu']}, {machine['cores']} cores; "
           + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items()) + ".",
           f"Command: `python bench/memory.py --models {args.models}{' --large' if args.large else ''}`. Each verb ran as "
           "its own process through the real CLI; peak RSS is the kernel's figure for that process (wait4).",
           f"Budget: 3x the model's bytes on disk plus its activations with every tensor kept, at batch {VERIFY_BATCH} "
           "(the verification batch).", "",
           "| model | model MiB | activations MiB | verb | peak RSS MiB | x model size | budget MiB | within | seconds |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, size, act, label, rss, seconds, budget in rows:
        out.append(f"| {name} | {size / 2**20:,.0f} | {act / 2**20:,.0f} | {label} | {rss / 2**20:,.0f} | "
                   f"{rss / size:.2f}x | {budget / 2**20:,.0f} | {'yes' if rss <= budget else '**no**'} | {seconds:.1f} |")
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0 if all(r[4] <= r[6] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
