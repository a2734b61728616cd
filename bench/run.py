"""The reproducible benchmark suite: `make bench` (CPU) and `make bench-gpu`.

CPU: for the trained digits CNN (LeNet-style), ResNet-18, ResNet-50, VGG-16 and DenseNet-121, at
batch 1 and 8: torch eager, ONNX Runtime on the raw export, on `optimize` (default passes), with
`--bottleneck macs=0.5`, with `--int8` and with both; where OpenVINO is installed, the same files in
OpenVINO (ov-cpu: f32, bf16 where the CPU has it natively, int8, bottleneck + int8); the memory check (peak RSS against the inspect floor,
and VGG-16 in lean-memory mode); and FC->CONV sliding against crop-by-crop evaluation. Every
measurement runs in its own process, the variants of one model are measured round-robin, and every
speed-up is a ratio between figures of this one run. Writes bench/RESULTS.md and bench/*.png.

GPU (--gpu): ort-cuda, ort-trt and trt in fp32/fp16/int8 for the same models; appends a GPU section.

    python bench/run.py [--models resnet18,vgg16] [--duration 1.5] [--rounds 2] [--gpu]
                        [--out bench/ENGINES.md --no-plots --no-sliding]   # a subset, leaving RESULTS.md alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deploykit import export  # noqa: E402
from deploykit.bench import run_one  # noqa: E402
from deploykit.analysis import inspect_model  # noqa: E402
from deploykit.machine import describe, precision_ceilings  # noqa: E402
from deploykit.optimize import optimize_model  # noqa: E402
from deploykit.stats import summarize  # noqa: E402

MODELS = ["digits", "resnet18", "resnet50", "vgg16", "densenet121",
          "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2", "regnet_y_400mf"]
CPU_VARIANTS = ["torch eager", "ORT raw export", "ORT optimize", "ORT bottleneck macs=0.5", "ORT bottleneck time=0.5",
                "ORT int8",
                "ORT bottleneck+int8", "OV f32", "OV bf16", "OV int8", "OV bottleneck+int8"]


def openvino_status() -> tuple[bool, bool]:
    """(OpenVINO installed, its CPU plugin has native bf16 here)."""
    try:
        from deploykit.backends.openvino import has_native_bf16

        return True, has_native_bf16()
    except Exception:
        return False, False


def build_variants(name: str, tmp: Path, log) -> tuple[dict, dict]:
    """variant -> (backend, artefact); and the accounting of each variant at batch 1."""
    raw = tmp / f"{name}.onnx"
    result = export(name, raw)
    shape = list(result.input_shape)
    calib = tmp / f"{name}_calib.npy"
    if name == "digits":
        calibration = "digits"
    else:
        np.save(calib, np.random.default_rng(0).standard_normal([16] + shape[1:]).astype(np.float32))
        calibration = str(calib)
    variants = {"torch eager": ("torch", name), "ORT raw export": ("ort-cpu", str(raw))}
    for label, opts in [("ORT optimize", {}), ("ORT bottleneck macs=0.5", {"bottleneck": "macs=0.5"}),
                        ("ORT bottleneck time=0.5", {"bottleneck": "time=0.5"}),
                        ("ORT int8", {"int8": True, "calibration": calibration}),
                        ("ORT bottleneck+int8", {"bottleneck": "time=0.5", "int8": True, "calibration": calibration})]:
        out = tmp / f"{name}_{'_'.join(label.split()[1:]).replace('=', '').replace('+', '_')}.onnx"
        start = time.perf_counter()
        report = optimize_with_reachable_budget(raw, out, opts, log, label)
        if report is None:
            continue
        log(f"  built {name} / {label} in {time.perf_counter() - start:.1f} s")
        variants[label] = ("ort-cpu", str(out))
        if label == "ORT int8":
            notes = [n for p in report.passes for n in p.notes if "run in int8" in n]
            variants[label] += (notes[0] if notes else "",)
    has_openvino, native_bf16 = openvino_status()
    if has_openvino:  # the same files, in OpenVINO: only the engine differs
        variants["OV f32"] = ("ov-cpu", str(raw))
        if native_bf16:
            variants["OV bf16"] = ("ov-cpu:bf16", str(raw))
        variants["OV int8"] = ("ov-cpu", variants["ORT int8"][1])
        if "ORT bottleneck+int8" in variants:
            variants["OV bottleneck+int8"] = ("ov-cpu", variants["ORT bottleneck+int8"][1])
    accounting = {}
    for label, (backend, artefact, *_) in variants.items():
        report = inspect_model(raw if backend == "torch" else artefact, tuple(shape), weights=False)
        accounting[label] = {"macs": report.totals.macs, "param_bytes": report.totals.param_bytes,
                             "peak_activation_bytes": report.totals.peak_activation_bytes, "shape": shape}
    return variants, accounting


def optimize_with_reachable_budget(raw: Path, out: Path, opts: dict, log, label: str):
    """optimize_model; a bottleneck budget the model cannot reach (ResNet-50's KxK layers alone cannot halve its
    MACs) is retried at the nearest one the refusal names, and the run says so."""
    from deploykit.passes.bottleneck import UnreachableBudget

    try:
        return optimize_model(raw, out, **opts)
    except UnreachableBudget as exc:
        reachable = exc.reachable
        if float(reachable.split("=")[1]) >= 1:
            NOTES.append(f"{raw.stem} / {label}: no bottleneck pays on this model (`--bottleneck {opts['bottleneck']}` "
                         f"is refused: the floor is {reachable}); the row is left out")
            return None
        log(f"  {raw.stem}: --bottleneck {opts['bottleneck']} cannot be reached; measured at {reachable}")
        NOTES.append(f"{raw.stem} / {label}: `--bottleneck {opts['bottleneck']}` cannot be reached (the pass "
                     f"refuses it and names the floor); the row was measured at `{reachable}`")
        return optimize_with_reachable_budget(raw, out, {**opts, "bottleneck": reachable}, log, label)


NOTES: list[str] = []


def measure(variants: dict, accounting: dict, batch: int, args, lean_extra=None) -> dict:
    """Round-robin over the variants `args.rounds` times; returns label -> merged raw result."""
    merged: dict[str, dict] = {}
    items = list(variants.items()) + ([lean_extra] if lean_extra else [])
    for _ in range(args.rounds):
        for label, (backend, artefact, *_) in items:
            spec = {"artefact": artefact, "backend": backend, "batch": batch, "warmup": 3,
                    "duration": args.duration, "input_shape": accounting[label]["shape"],
                    "lean_memory": label.endswith("(lean memory)")}
            raw = run_one(spec)
            m = merged.setdefault(label, {"latencies_s": [], "wall_s": 0.0, "peak": 0, "base": raw["baseline_rss_bytes"],
                                          "warmup_s": raw["warmup_s"], "precision": raw.get("precision", "fp32")})
            m["latencies_s"] += raw["latencies_s"]
            m["wall_s"] += raw["wall_s"]
            m["peak"] = max(m["peak"], raw["peak_rss_bytes"] - raw["baseline_rss_bytes"])
    return merged


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--gpu", action="store_true", help="the GPU suite (ort-cuda, ort-trt, trt)")
    ap.add_argument("--no-plots", action="store_true", help="leave bench/*.png and results.json as they are")
    ap.add_argument("--no-sliding", action="store_true", help="skip the FC->CONV section")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.gpu:
        return gpu_suite(args, log)
    started = time.perf_counter()
    machine = describe()
    ceilings = precision_ceilings()
    best = {p: max(figures.values()) for p, figures in ceilings.items()}
    ceiling = best["fp32"]
    log(f"ceilings (best MatMul per number format): {ceilings}")
    rows, plots = [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            variants, accounting = build_variants(name, tmp, log)
            int8_note = variants["ORT int8"][2] if len(variants["ORT int8"]) > 2 else ""
            for batch in (1, 8):
                lean = None
                if name == "vgg16" and batch == 1:
                    from deploykit.bench import _external_weights

                    lean_path = _external_weights(Path(variants["ORT raw export"][1]), tmp)
                    lean = ("ORT raw export (lean memory)", ("ort-cpu", str(lean_path)))
                    accounting[lean[0]] = accounting["ORT raw export"]
                log(f"measuring {name} at batch {batch} ({time.perf_counter() - started:.0f} s so far)")
                merged = measure(variants, accounting, batch, args, lean)
                base = ort_raw = None
                for label, m in merged.items():
                    s = summarize(m["latencies_s"], m["wall_s"], batch)
                    acc = accounting[label]
                    floor = acc["param_bytes"] + acc["peak_activation_bytes"] * batch
                    gflops = 2 * acc["macs"] * s.images_per_s / 1e9
                    if label == "torch eager":
                        base = s.images_per_s
                    if label == "ORT raw export":
                        ort_raw = s.images_per_s
                    rows.append({"model": name, "variant": label, "batch": batch, "images_per_s": s.images_per_s,
                                 "median_ms": s.median_ms, "p99_ms": s.p99_ms, "cv": s.cv,
                                 "speedup_vs_torch": s.images_per_s / base if base else None,
                                 "speedup_vs_ort_raw": s.images_per_s / ort_raw if ort_raw else None,
                                 "macs": acc["macs"], "gflops": gflops, "precision": m["precision"],
                                 "ceiling_fraction": gflops / best.get(m["precision"], ceiling),
                                 "rss": m["peak"], "floor": floor, "warmup_s": m["warmup_s"],
                                 "note": int8_note if label == "ORT int8" else ""})
                    plots.setdefault(name, {}).setdefault(label, {})[batch] = (s.images_per_s, [1e3 * v for v in m["latencies_s"]])
        sliding = "vgg16" in args.models.split(",") and not args.no_sliding
        sliding_lines = sliding_section(tmp, args) if sliding else []
    elapsed = time.perf_counter() - started
    write_results(Path(args.out), machine, ceilings, rows, sliding_lines, elapsed, args)
    if not args.no_plots:
        draw(plots, HERE)
        (HERE / "results.json").write_text(json.dumps({"machine": machine, "ceilings": ceilings, "rows": rows},
                                                      indent=1, default=float) + "\n")
    log(f"done in {elapsed:.0f} s: {args.out}")


def sliding_section(tmp: Path, args) -> list[str]:
    from passes import sliding  # bench/passes.py: the same measurement, reused

    return sliding(tmp, argparse.Namespace(rounds=max(2, args.rounds)))


def write_results(path: Path, machine, ceilings, rows, sliding_lines, elapsed, args):
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    out = ["# Benchmark results", "",
           f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine.get('gpu') or 'none'}; "
           f"Python {machine['python']}; {libs}.",
           f"Command: `{'python bench/run.py ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else 'make bench'}` "
           f"(duration {args.duration} s, {args.rounds} rounds), "
           f"{elapsed / 60:.1f} minutes. Ceilings, measured at the start as the fastest 1024x1024 MatMul each "
           "number format reaches (int8 in GOP/s: uint8 x int8 through QuantizeLinear/DequantizeLinear in ONNX "
           "Runtime and OpenVINO, int8 x int8 into int32 through torch._int_mm in torch): "
           + "; ".join(f"**{p}** " + ", ".join(f"{e} {v:.0f}" for e, v in figures.items())
                       for p, figures in ceilings.items()) + ". Each variant's fraction is against the best "
           "ceiling of its own precision.",
           "", "Each measurement ran in a fresh process; the variants of one model were measured round-robin "
           f"({args.rounds} rounds of {args.duration} s each), with the same input reused between iterations. "
           "Speed-ups are ratios of images/s measured in this run. RSS is the process's peak above its baseline "
           "before loading the model; the floor is weights + peak live activations x batch, from `deploykit inspect`.",
           ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        out += [f"## {name}", "",
                "| variant | batch | images/s | speed-up vs torch | vs ORT raw | median ms | p99 ms | CV | MMACs/image | GFLOP/s | precision | of its ceiling | peak RSS MiB | floor MiB |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if r["model"] != name:
                continue
            sp = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
            vs_raw = f"{r['speedup_vs_ort_raw']:.2f}x" if r.get("speedup_vs_ort_raw") else "-"
            out.append(f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | {sp} | {vs_raw} | {r['median_ms']:.2f} | "
                       f"{r['p99_ms']:.2f} | {r['cv']:.1%} | {r['macs'] / 1e6:,.1f} | {r['gflops']:.0f} | "
                       f"{r['precision']} | {r['ceiling_fraction']:.0%} | {r['rss'] / 2**20:.0f} | {r['floor'] / 2**20:.1f} |")
        notes = {r["note"] for r in rows if r["model"] == name and r["note"]}
        out += [""] + [f"int8: {n}." for n in notes] + [""]
    out += [f"- {n}" for n in NOTES] + ([""] if NOTES else [])
    out += sliding_lines
    if not args.no_plots:
        out += ["", "![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    path.write_text("\n".join(out) + "\n")


def draw(plots, folder: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(plots)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        labels = list(plots[name])
        xs = np.arange(len(labels))
        for i, batch in enumerate((1, 8)):
            ax.bar(xs + (i - 0.5) * 0.4, [plots[name][l].get(batch, (0, []))[0] for l in labels], 0.4, label=f"batch {batch}")
        ax.set_xticks(xs, [l.replace("ORT ", "").replace(" (lean memory)", "\n(lean)") for l in labels], rotation=45,
                      ha="right", fontsize=7)
        ax.set_title(name)
        ax.set_ylabel("images / s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        labels = [l for l in plots[name] if 1 in plots[name][l]]
        ax.boxplot([plots[name][l][1][1] for l in labels], showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), [l.replace("ORT ", "") for l in labels], rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{name}, batch 1")
        ax.set_ylabel("latency (ms)")
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=90)
    plt.close(fig)


def gpu_suite(args, log):
    """ort-cuda, ort-trt and trt in fp32/fp16/int8: written against the real APIs, run where a GPU is present."""
    from deploykit.backends import BuildOptions, get_backend

    for name in ("ort-cuda", "ort-trt", "trt"):
        ok, why = get_backend(name).available()
        if not ok:
            log(f"error: {why}")
            return 4
    machine = describe()
    lines = ["", f"## GPU: {machine.get('gpu')}", "",
             "| model | backend | precision | batch | images/s | median ms | p99 ms | H2D ms | compute ms | D2H ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            raw = tmp / f"{name}.onnx"
            shape = list(export(name, raw).input_shape)
            qdq = tmp / f"{name}_qdq.onnx"
            calib = tmp / "calib.npy"
            np.save(calib, np.random.default_rng(0).standard_normal([16] + shape[1:]).astype(np.float32))
            optimize_model(raw, qdq, int8=True, calibration="digits" if name == "digits" else str(calib),
                           target="tensorrt", fuse=False)
            for backend in ("ort-cuda", "ort-trt", "trt"):
                for precision in ("fp32", "fp16", "int8"):
                    if backend == "ort-cuda" and precision != "fp32":
                        continue
                    source = qdq if precision == "int8" else raw
                    options = BuildOptions(fp16=precision == "fp16", int8=precision == "int8",
                                           min_shape=tuple([1] + shape[1:]), opt_shape=tuple([8] + shape[1:]),
                                           max_shape=tuple([8] + shape[1:]))
                    artefact = tmp / f"{name}_{backend}_{precision}{'.plan' if backend == 'trt' else '.onnx'}"
                    get_backend(backend).build(source, artefact, options)
                    for batch in (1, 8):
                        raw_result = run_one({"artefact": str(artefact), "backend": backend, "batch": batch,
                                              "warmup": 20, "duration": args.duration, "input_shape": shape})
                        s = summarize(raw_result["latencies_s"], raw_result["wall_s"], batch)
                        split = raw_result.get("device_split_ms") or {}
                        lines.append(f"| {name} | {backend} | {precision} | {batch} | {s.images_per_s:.1f} | "
                                     f"{s.median_ms:.2f} | {s.p99_ms:.2f} | {split.get('h2d_ms', float('nan')):.2f} | "
                                     f"{split.get('compute_ms', float('nan')):.2f} | {split.get('d2h_ms', float('nan')):.2f} |")
    with open(args.out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    log(f"appended the GPU section to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
