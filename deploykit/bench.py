"""`deploykit bench`: throughput, latency and memory per model x backend x batch size.

Each measurement runs in a fresh subprocess (deploykit.bench_worker). For every run it reports
trtexec-style throughput and latency statistics (definitions in deploykit.stats), the warm-up time
(session creation + first call), the artefact's size, the process's peak RSS above its baseline,
the memory floor from `inspect` (weights + peak live activations x batch) next to it, and the
achieved GFLOP/s (GOP/s for int8) against the ceiling of the variant's own number format, measured
at the start (deploykit.machine.precision_ceilings: the fastest MatMul each format reaches here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import BackendUnavailableError, DeploykitError, UserInputError
from .stats import summarize


@dataclass
class Target:
    label: str            # what the user named
    onnx: Path | None     # the ONNX model (for ort-* backends and accounting)
    artefact: dict        # backend -> what its runner loads
    input_shape: list[int] | dict[str, list[int]] | None  # one input's shape, or {input name: shape}
    macs: int | None = None
    fixed_batch: int | None = None  # the batch size a static-batch model accepts
    param_bytes: int | None = None
    peak_activation_bytes: int | None = None


@dataclass
class Result:
    model: str
    backend: str
    batch: int
    stats: dict
    warmup_s: float
    size_bytes: int | None
    peak_rss_bytes: int
    baseline_rss_bytes: int
    floor_bytes: int | None
    gflops: float | None
    ceiling_fraction: float | None  # against the ceiling of its own precision
    lean_memory: bool
    latencies_ms: list[float] = field(default_factory=list)
    device_split_ms: dict | None = None
    device_peak_bytes: int | None = None
    precision: str = "fp32"  # the number format its heavy layers run in: fp32, fp16, bf16 or int8

    @property
    def model_rss_bytes(self) -> int:
        return self.peak_rss_bytes - self.baseline_rss_bytes


@dataclass
class BenchReport:
    machine: dict
    ceiling_gflops: float  # fp32
    results: list[Result]
    warnings: list[str]
    inputs_reused: bool = True
    ceilings: dict = field(default_factory=dict)  # {precision: {engine: GFLOP/s}}

    def ceiling(self, precision: str) -> float | None:
        """The best figure any engine reached for this number format (fp16 on a CPU is judged as fp32)."""
        figures = self.ceilings.get("fp32" if precision == "fp16" else precision) or {}
        return max(figures.values(), default=None) or (self.ceiling_gflops if precision in ("fp32", "fp16") else None)

    def to_dict(self) -> dict:
        out = {"machine": self.machine, "ceiling_gflops": self.ceiling_gflops, "ceilings": self.ceilings,
               "inputs_reused": self.inputs_reused, "warnings": self.warnings, "results": []}
        for r in self.results:
            d = asdict(r)
            d["model_rss_bytes"] = r.model_rss_bytes
            out["results"].append(d)
        return out


def resolve_target(spec: str, workdir: Path, input_shape=None) -> Target:
    """A zoo name (exported here, with the torch baseline), an ONNX file, or a built artefact.

    `input_shape` (one shape, or {input name: shape}) fills the dynamic dimensions other than the batch;
    the batch is each measurement's own."""
    from .zoo import zoo_entries

    path = Path(spec)
    if spec in zoo_entries():
        from .exporter import export

        onnx_path = workdir / f"{spec}.onnx"
        result = export(spec, onnx_path, input_shape=input_shape)
        return _with_accounting(Target(spec, onnx_path, {"torch": spec}, list(result.input_shape)))
    if not path.exists():
        raise UserInputError(f"{spec} is neither a zoo name nor a file: give an ONNX model, a built artefact or a zoo name")
    given = _plain_shapes(input_shape)
    if path.suffix == ".plan":
        return Target(spec, None, {"trt": str(path)}, given)
    if path.suffix == ".xml":  # OpenVINO IR from 'deploykit build --backend ov-cpu'
        return Target(spec, None, {"ov-cpu": str(path), "ov-cpu:bf16": str(path)}, given)
    from .storage import load_model

    from .signature import read_signature

    proto = load_model(path, load_weights=False)
    signature = read_signature(proto)
    first = signature.inputs[0].dims if signature.inputs else None
    fixed = first[0] if first and isinstance(first[0], int) else None
    # Checked here, before any worker starts: a dynamic dimension nobody gave is one line naming the flag.
    shapes = {name: list(shape) for name, shape in signature.resolve(input_shape).items()}
    return _with_accounting(Target(spec, path, {}, shapes, fixed_batch=fixed))


def _check_batch_fits(target: Target, batch: int) -> None:
    """Refuse a batch whose inputs alone would not fit in memory, before a worker dies of it."""
    from .memory import check_allocation

    shape = target.input_shape
    for name, dims in (shape.items() if isinstance(shape, dict) else [("input", shape)] if shape else []):
        if dims:
            check_allocation([batch, *dims[1:]], "float32", f"a batch of {batch} for input {name!r}",
                             "give a smaller --batch", copies=2)


def _plain_shapes(input_shape):
    """--input-shape's {name or None: shape} as runners take it: one shape, or {input name: shape}."""
    if not input_shape:
        return None
    if isinstance(input_shape, dict):
        if set(input_shape) == {None}:
            return list(input_shape[None])
        return {name: list(shape) for name, shape in input_shape.items()}
    return list(input_shape)


def _with_accounting(target: Target) -> Target:
    from .analysis import inspect_model

    shape = target.input_shape
    first = (next(iter(shape.values()), None) if isinstance(shape, dict) else shape) or [1]
    try:
        report = inspect_model(target.onnx, shape if isinstance(shape, dict) else tuple(shape) if shape else None)
        target.macs = report.totals.macs
        target.param_bytes = report.totals.param_bytes
        target.peak_activation_bytes = report.totals.peak_activation_bytes // max(1, first[0] if first else 1)
    except DeploykitError:
        pass  # e.g. an --ort-layout artefact: measured, but without the accounting columns
    return target


def _default_backends(target: Target) -> list[str]:
    if "trt" in target.artefact:
        return ["trt"]
    if "ov-cpu" in target.artefact:
        return ["ov-cpu"]
    return (["torch"] if "torch" in target.artefact else []) + ["ort-cpu"]


def run_one(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "deploykit.bench_worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeploykitError(f"benchmark of {spec['artefact']} on {spec['backend']} failed: {tail}")
    data = json.loads(lines[-1])
    if "error" in data:
        raise DeploykitError(f"benchmark of {spec['artefact']} on {spec['backend']} failed: {data['error']}")
    return data


def bench(models: Sequence[str], backends: Sequence[str] | None = None, batches: Sequence[int] = (1, 8),
          warmup: int = 20, iterations: int | None = None,
          duration: float | None = None, threads: int | None = None, lean_memory: bool = False,
          progress=None, measure_ceiling: bool = True, input_shape=None) -> BenchReport:
    """Measure every model x backend x batch; see the module docstring for what is reported."""
    from .errors import UserInputError, option

    if iterations is not None and duration is not None:
        raise UserInputError(f"give one of {option('iterations')} and {option('duration')}, not both")
    from .backends import get_backend
    from .machine import describe, precision_ceilings

    machine = describe()
    ceilings = precision_ceilings(threads) if measure_ceiling else {}
    report = BenchReport(machine, max(ceilings.get("fp32", {}).values(), default=0.0), [], [], ceilings=ceilings)
    results, warnings = report.results, report.warnings
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        workdir = Path(tmp)
        targets = [resolve_target(m, workdir, input_shape) for m in models]
        plan = []
        for t in targets:
            for name in (backends or _default_backends(t)):
                if name == "trt" and "trt" not in t.artefact:
                    raise UserInputError(f"--backend trt runs a TensorRT plan, and {t.label} is not one: build it with "
                                         "'deploykit build MODEL.onnx --backend trt -o MODEL.plan' and bench the .plan "
                                         "(or bench the ONNX file with --backend ort-trt)")
                backend = get_backend(backend_name(name))
                ok, why = backend.available()
                if not ok:
                    raise BackendUnavailableError(why)
                if name == "torch" and "torch" not in t.artefact:
                    raise UserInputError(f"--backend torch runs the PyTorch source model, and {t.label} is not one: "
                                         "give a zoo name, or benchmark the ONNX file with --backend ort-cpu")
                artefact = t.artefact.get(name) or str(t.onnx)
                if lean_memory and name.startswith("ort"):
                    artefact = str(_external_weights(Path(artefact), workdir))
                takes = [b for b in batches if t.fixed_batch is None or b == t.fixed_batch]
                skipped = [b for b in batches if b not in takes]
                if skipped:
                    warnings.append(f"{t.label}: its batch is fixed at {t.fixed_batch}; skipped batch "
                                    f"{', '.join(map(str, skipped))} (re-export with --dynamic-batch to measure them)")
                for batch in takes:
                    _check_batch_fits(t, batch)
                    plan.append((t, name, artefact, batch))
        if not plan:
            raise UserInputError(f"nothing to measure: no model takes batch {', '.join(map(str, batches))}; "
                                 "give --batch with a size the model accepts")
        for i, (t, name, artefact, batch) in enumerate(plan):
            if progress:
                progress(i, len(plan), f"{t.label} / {name} / batch {batch}")
            spec = {"artefact": artefact, "backend": name, "batch": batch, "warmup": warmup,
                    "iterations": iterations, "duration": duration, "threads": threads,
                    "input_shape": t.input_shape, "lean_memory": lean_memory}
            raw = run_one(spec)
            stats = summarize(raw["latencies_s"], raw["wall_s"], batch)
            if stats.unstable:
                warnings.append(f"{t.label} / {name} / batch {batch}: latency varies by {stats.cv:.1%} (CV > 5%): "
                                "the machine is busy or throttling; rerun before trusting these figures")
            size = None if name == "torch" else _size(Path(artefact))
            floor = (t.param_bytes + t.peak_activation_bytes * batch) if t.param_bytes is not None else None
            gflops = 2 * t.macs * stats.images_per_s / 1e9 if t.macs else None
            precision = raw.get("precision") or "fp32"
            # The ceilings are this CPU's: a GPU's throughput is not a fraction of them.
            ceiling = report.ceiling(precision) if get_backend(backend_name(name)).device == "cpu" else None
            results.append(Result(
                t.label, name, batch, stats.to_dict(), raw["warmup_s"], size, raw["peak_rss_bytes"],
                raw["baseline_rss_bytes"], floor, gflops, (gflops / ceiling) if gflops and ceiling else None,
                lean_memory, [1e3 * v for v in raw["latencies_s"]], raw.get("device_split_ms"),
                raw.get("device_peak_bytes"), precision))
        if progress:
            progress(len(plan), len(plan), "done")
    return report


def backend_name(spec: str) -> str:
    """'ov-cpu:bf16' -> 'ov-cpu': a bench variant is a backend and, after the colon, a precision."""
    return spec.split(":", 1)[0]


def _size(path: Path) -> int:
    size = path.stat().st_size
    for side in (Path(str(path) + ".data"), path.with_suffix(".bin") if path.suffix == ".xml" else None):
        if side is not None and side.exists():
            size += side.stat().st_size
    return size


def _external_weights(model: Path, workdir: Path) -> Path:
    """The model with its weights in a side file, which ORT maps instead of copying (lean memory)."""
    from .storage import load_model, save_model

    out = workdir / f"{model.stem}.lean.onnx"
    if not out.exists():
        save_model(load_model(model), out, external_weights=True)
    return out


# -- reports ---------------------------------------------------------------------------------------

def _mib(n):
    if n is None:
        return "-"
    return f"{n / 2**20:.1f}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"


def fastest(report: BenchReport) -> list[str]:
    """Per model and batch measured on more than one backend: which ran fastest, as a ratio to the others."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in report.results:
        groups.setdefault((r.model, r.batch), []).append(r)
    lines = []
    for (model, batch), rs in groups.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: -r.stats["images_per_s"])
        best = rs[0]
        others = ", ".join(f"{best.stats['images_per_s'] / r.stats['images_per_s']:.2f}x {r.backend}" for r in rs[1:])
        lines.append(f"fastest for {model} at batch {batch}: {best.backend} ({others})")
    return lines


def format_table(report: BenchReport) -> str:
    head = ["model", "backend", "precision", "batch", "img/s", "qps", "mean", "median", "p90", "p95", "p99", "min",
            "CV", "warm-up s", "size MiB", "RSS MiB", "floor MiB", "GFLOP/s", "% ceiling"]
    rows = []
    for r in report.results:
        s = r.stats
        rows.append([r.model, r.backend + (" lean" if r.lean_memory else ""), r.precision, str(r.batch),
                     f"{s['images_per_s']:.1f}",
                     f"{s['qps']:.1f}", f"{s['mean_ms']:.2f}", f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}",
                     f"{s['p95_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['min_ms']:.2f}", f"{s['cv']:.1%}",
                     f"{r.warmup_s:.2f}", _mib(r.size_bytes), _mib(r.model_rss_bytes), _mib(r.floor_bytes),
                     f"{r.gflops:.0f}" if r.gflops else "-",
                     f"{r.ceiling_fraction:.0%}" if r.ceiling_fraction else "-"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    m = report.machine
    lines += ["", f"machine: {m['cpu']}, {m['cores']} cores, GPU: {m.get('gpu') or 'none'}; ceilings "
              f"(best MatMul per number format): {format_ceilings(report)}",
              "% ceiling is against the ceiling of the variant's own precision (int8 in GOP/s)",
              "latency in ms; inputs are reused between iterations; RSS is the process's peak above its baseline "
              "before loading the model; floor = weights + peak live activations x batch (from inspect)"]
    lines += fastest(report)
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def format_ceilings(report: BenchReport) -> str:
    if not report.ceilings:
        return f"fp32 {report.ceiling_gflops:.0f} GFLOP/s"
    return "; ".join(f"{p} " + ", ".join(f"{engine} {v:.0f}" for engine, v in figures.items())
                     for p, figures in report.ceilings.items()) + " GFLOP/s"


def format_markdown(report: BenchReport) -> str:
    m = report.machine
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    out = ["# deploykit bench", "", f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m.get('gpu') or 'none'}; {libs}.",
           f"Ceilings (the best MatMul each number format reaches here): {format_ceilings(report)}; each variant's "
           "% is against the ceiling of its own precision. "
           "Each measurement ran in a fresh process; inputs were reused between iterations.", "",
           "| model | backend | batch | images/s | median ms | p99 ms | CV | peak RSS MiB | floor MiB | GFLOP/s | of ceiling |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report.results:
        s = r.stats
        out.append(f"| {r.model} | {r.backend}{' (lean)' if r.lean_memory else ''} | {r.batch} | {s['images_per_s']:.1f} | "
                   f"{s['median_ms']:.2f} | {s['p99_ms']:.2f} | {s['cv']:.1%} | {_mib(r.model_rss_bytes)} | "
                   f"{_mib(r.floor_bytes)} | {r.gflops or 0:.0f} | "
                   f"{f'{r.ceiling_fraction:.0%}' if r.ceiling_fraction else '-'} |")
    if fastest(report):
        out += [""] + [f"- {line}" for line in fastest(report)]
    if report.warnings:
        out += [""] + [f"- warning: {w}" for w in report.warnings]
    return "\n".join(out) + "\n"


def plot(report: BenchReport, path: Path) -> None:
    """Throughput vs batch size per variant, and the latency distribution at the largest batch."""
    from .errors import option
    from .plotting import pyplot, save_png

    plt = pyplot(option("plot"))
    variants: dict[str, list[Result]] = {}
    for r in report.results:
        variants.setdefault(f"{r.model} / {r.backend}", []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, rs in variants.items():
        rs = sorted(rs, key=lambda r: r.batch)
        ax1.plot([r.batch for r in rs], [r.stats["images_per_s"] for r in rs], marker="o", label=name)
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("images / s")
    ax1.set_xscale("log", base=2)
    ax1.set_title("throughput")
    ax1.legend(fontsize=8)
    largest = [max(rs, key=lambda r: r.batch) for rs in variants.values()]
    ax2.boxplot([r.latencies_ms for r in largest], showfliers=True)
    ax2.set_xticks(range(1, len(largest) + 1), [f"{r.model}\n{r.backend}\nbs{r.batch}" for r in largest], fontsize=7)
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("latency distribution, largest batch")
    fig.tight_layout()
    save_png(fig, path)
