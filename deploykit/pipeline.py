"""The verified pipeline: run passes in order, and prove each one numerically as it goes.

After every pass the model is run in ONNX Runtime and compared with the *input* model on the same
inputs (random ones at the recorded input shape, and, for the trained digits model, the real
digits test set, where accuracy is reported too). An exact pass whose deviation exceeds the
tolerance stops the pipeline and nothing is written; an approximating pass (bottleneck, fp16,
int8) reports its deviation and fails only above max_error, when one is given.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import storage
from .errors import BudgetNotHeld, UserInputError, VerificationError, option  # noqa: F401  (BudgetNotHeld: its old home)
from .options import DEFAULT_TOLERANCE  # noqa: F401  (their old home)
from .verify import compare, cpu_session, worst



@dataclass
class PassReport:
    name: str
    exact: bool
    modified: bool
    notes: list[str]
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs: float  # against the input model, on the validation data: what the pipeline has changed so far
    max_rel: float
    step_max_abs: float  # against the model just before this pass: what this pass changed
    step_max_rel: float
    seconds: float
    # {"samples", "top1_agreement", "accuracy_before", "accuracy_after", "data"}: against the input model
    validation: dict = field(default_factory=dict)

    @property
    def accuracy_before(self) -> float | None:
        return self.validation.get("accuracy_before")

    @property
    def accuracy_after(self) -> float | None:
        return self.validation.get("accuracy_after")

    @property
    def top1_agreement(self) -> float | None:
        return self.validation.get("top1_agreement")


@dataclass
class OptimizeReport:
    input: str
    output: str | None
    input_shapes: dict[str, list[int]]
    validation_data: str = ""
    noise_floor: float = 0.0  # max rel deviation between ORT's optimised and unoptimised runs of the input
    exact_limit: float = 0.0  # what an exact pass may change: max(tolerance, 2 x noise floor)
    passes: list[PassReport] = field(default_factory=list)
    recipe: dict | None = None  # {"name", "bottleneck", "accuracy_budget", "drop", "refused"} with --recipe

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "input_shapes": self.input_shapes,
                "validation_data": self.validation_data, "noise_floor": self.noise_floor,
                "exact_limit": self.exact_limit, "passes": [asdict(p) for p in self.passes], "recipe": self.recipe}


def _run_all(session, feeds):
    from .validation import run_batched

    return run_batched(session, feeds)


class _Evaluator:
    """Runs each candidate on the validation set and compares it with the input model and the previous step."""

    def __init__(self, proto, validation, label=None, runnable=None, metric=None):
        self.label = label
        self.metric = metric
        self.validation = validation
        self.output_names = [o.name for o in proto.graph.output]
        proto = runnable or proto  # a path lets ONNX Runtime read the file itself: no serialised copy in Python
        self.reference = self._run(proto)
        self.previous = self.reference
        # The model's own float32 noise: how far ONNX Runtime's optimisations (fusions that reorder the
        # same arithmetic) move it on this data. On a deep detector on real images that is 1.2e-4, more
        # than a fixed 1e-4 tolerance: an exact pass is judged against whichever is larger.
        unoptimized = _run_all(cpu_session(proto, "disable", label=self.label), validation.feeds)
        self.noise_floor = worst(compare(self.output_names, self.reference, unoptimized)).max_rel
        from .validation import accuracy

        self.reference_accuracy = accuracy(self.reference[0], validation.labels)
        self.reference_metric = (None if metric is None else
                                 metric.score(self.reference, self.reference, validation.labels))

    def _run(self, proto, label=None):
        return _run_all(cpu_session(proto, label=label or self.label), self.validation.feeds)

    def measure(self, proto, label=None):
        """(deviation from the input model, deviation from the previous step, validation figures)."""
        from .validation import accuracy, top1_agreement

        outs = self._run(proto, label)
        # FC->CONV keeps the numbers but may turn (N, K) into (N, K, 1, 1): compare like for like.
        outs = [o.reshape(r.shape) if o.shape != r.shape and o.size == r.size else o
                for o, r in zip(outs, self.reference)]
        deviation = worst(compare(self.output_names, self.reference, outs))
        step = worst(compare(self.output_names, self.previous, outs))
        self.previous = outs
        figures = {"samples": self.validation.samples, "top1_agreement": top1_agreement(self.reference[0], outs[0]),
                   "accuracy_before": self.reference_accuracy,
                   "accuracy_after": accuracy(outs[0], self.validation.labels), "data": self.validation.source}
        if self.metric is not None and self.reference_metric is not None:
            after = self.metric.score(self.reference, outs, self.validation.labels)
            figures.update(metric=self.metric.describe(), metric_before=self.reference_metric, metric_after=after)
        return deviation, step, figures


def _stats(model, shapes):
    """(nodes, parameters, MACs) of a ModelProto or a staged model file (read without its weights)."""
    from .analysis import inspect_model

    report = inspect_model(model, shapes, weights=False) if isinstance(model, (str, Path)) else \
        inspect_model(model, shapes)
    return len(report.layers), report.totals.params, report.totals.macs


@contextlib.contextmanager
def _staged(model):
    """`model` (onnx_ir) saved to a private temporary folder, weights over 1 KiB in a side file; yields the path."""
    import onnx_ir as ir

    with storage.temporary(Path(tempfile.mkdtemp(prefix="deploykit-stage-"))) as folder:
        path = folder / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data", size_threshold_bytes=1024)
        yield str(path)


def resolve_input_shapes(proto, given=None) -> dict[str, tuple[int, ...]]:
    """One concrete shape per input: given, recorded at export, or static (see deploykit.signature)."""
    from .signature import read_signature

    return read_signature(proto).resolve(given)


def run_pipeline(model_path, passes, output_path=None, *, input_shape=None, tolerance=DEFAULT_TOLERANCE,
                 max_error=None, progress=None, validate=None, calibration=None, accept=None,
                 metric=None) -> OptimizeReport:
    """Apply `passes` (GraphPass instances, in order) to the ONNX model at `model_path`.

    Each pass is judged on `validate` (see deploykit.validation), else on `calibration`, else on
    random samples. Returns the report; writes `output_path` atomically when given. The input file
    is never modified. `accept(report)` (optional) returns None to accept the result, or the reason it is
    refused, which raises BudgetNotHeld before anything is written.
    """
    import onnx_ir as ir

    inputs = storage.model_files(model_path) + [Path(d) for d in (validate, calibration)
                                           if isinstance(d, (str, Path)) and Path(d).is_file()]
    if output_path is not None:
        storage.check_output_path(output_path, inputs)
    # The graph without its external weights: a large model's weights stay on disk, mapped by onnx_ir
    # below and read by ONNX Runtime from the file, never copied into a protobuf.
    from .analysis import weightless_copy

    proto = weightless_copy(storage.load_model(model_path, load_weights=False))
    shapes = resolve_input_shapes(proto, input_shape)
    outline = ir.from_proto(proto)  # op types, no weights: enough for the passes' preconditions
    for p in passes:
        p.requires(outline)  # before any work: a refusal costs the user nothing
    from .signature import read_signature
    from .validation import load_validation

    validation = load_validation(validate, read_signature(proto), shapes, calibration=calibration)
    evaluator = _Evaluator(proto, validation, label=str(model_path), runnable=str(model_path), metric=metric)
    exact_limit = max(tolerance, 2 * evaluator.noise_floor)
    report = OptimizeReport(str(model_path), str(output_path) if output_path else None,
                            {k: list(v) for k, v in shapes.items()}, validation.source, evaluator.noise_floor,
                            exact_limit)
    from .passes import PipelineContext

    context = PipelineContext(input_shapes=shapes, validation=validation)
    for p in passes:
        p.prepare(context)
    stats = _stats(str(model_path), shapes)
    model = ir.load(str(model_path))
    for p in passes:
        if progress:
            progress(p.name)
        start = time.perf_counter()
        result = p(model)
        model = result.model
        _tidy(model)
        seconds = time.perf_counter() - start
        with _staged(model) as staged:
            # The candidate is written once, weights in a side file: ONNX Runtime and the accounting both
            # read it from there, so no second protobuf copy of a large model is ever held in memory.
            try:
                deviation, step, figures = evaluator.measure(staged, label=f"the model pass {p.name} wrote")
            except UserInputError as exc:  # the input loaded: what does not is deploykit's own rewrite
                raise VerificationError(f"{exc}; nothing was written: run without this pass, and report it "
                                        "as a deploykit bug") from exc
            after = stats if getattr(p, "preserves_accounting", False) else _stats(staged, shapes)
        report.passes.append(PassReport(
            p.name, p.exact, result.modified, list(getattr(result, "notes", p.notes)), stats[0], after[0], stats[1], after[1],
            stats[2], after[2], deviation.max_abs, deviation.max_rel, step.max_abs, step.max_rel, seconds, figures))
        stats = after
        if p.exact and step.max_rel > exact_limit:
            floor = (f" (twice the model's own float32 noise, {evaluator.noise_floor:.2g})"
                     if exact_limit > tolerance else "")
            raise VerificationError(f"pass {p.name} changed the model's outputs beyond tolerance {exact_limit:.3g}"
                                    f"{floor}: {step.describe()}; nothing was written")
        if max_error is not None and deviation.max_rel > max_error:
            raise VerificationError(f"after pass {p.name} the outputs deviate by {deviation.max_rel:.3g} relative, "
                                    f"above {option('max-error')} {max_error:g}: {deviation.describe()}; nothing was written")
    refusal = accept(report) if accept is not None else None
    if refusal:
        raise BudgetNotHeld(refusal, report)
    if output_path is not None:
        del evaluator  # the reference outputs are no longer needed
        storage.save_ir_model(model, output_path, inputs=inputs, metadata={
            "passes": ",".join(p.name for p in passes),
            "optimize_max_rel": f"{max((r.max_rel for r in report.passes), default=0.0):.3e}"})
    return report


def _tidy(model) -> None:
    """Drop what a rewrite left unread (old weights, dead nodes) so the next pass and the stats see the real graph."""
    import onnx_ir.passes.common as common

    common.RemoveUnusedNodesPass()(model)


def total_drop(report: OptimizeReport) -> float | None:
    """Points of accuracy (labelled data) or of top-1 agreement the whole pipeline cost against its input."""
    from .validation import points

    if not report.passes:
        return 0.0
    last = report.passes[-1]
    if last.validation.get("metric_after") is not None:
        return points(last.validation["metric_before"] - last.validation["metric_after"])
    if last.accuracy_before is not None and last.accuracy_after is not None:
        return points(100.0 * (last.accuracy_before - last.accuracy_after))
    return None if last.top1_agreement is None else points(100.0 * (1.0 - last.top1_agreement))


def whole_result_within(budget: float):
    """An accept() for run_pipeline: the whole result's drop against the input stays within `budget` points."""
    def holds(report):
        drop = total_drop(report)
        if drop is not None and drop > budget:
            last = report.passes[-1]
            what = (last.validation.get("metric") or
                    ("accuracy" if last.accuracy_after is not None else "top-1 agreement"))
            return (f"the result costs {drop:.2f} points of {what} "
                    f"against the input, over {option('max-accuracy-drop')} {budget:g}; nothing was written")
        return None
    return holds


def run_options(model_path, output_path, options, *, progress=None, accept=None) -> OptimizeReport:
    """The pipeline `options` (a checked deploykit.options.OptimizeOptions without a recipe) asks for, run
    verified. With an accuracy budget the whole result is held to it against the input unless `accept` is given."""
    options = load_calibration_once(model_path, options)
    if options.budget is not None and accept is None:
        accept = whole_result_within(options.budget)
    from .passes import build_pipeline

    passes = build_pipeline(options)
    return run_pipeline(model_path, passes, output_path, input_shape=options.input_shape, tolerance=options.tolerance,
                        max_error=options.max_error, progress=progress, validate=options.validate,
                        calibration=options.calibration, accept=accept, metric=options.metric)


def load_calibration_once(model_path, options):
    """The options with their calibration data read (and bad data refused) before any pass runs, once for every
    pass that uses it."""
    calibration, validate = options.calibration, options.validate
    if calibration is None or isinstance(calibration, np.ndarray):
        return options
    from .calibration import load_calibration

    proto = storage.load_model(model_path, load_weights=False)
    shapes = resolve_input_shapes(proto, options.input_shape)
    if len(shapes) > 1:
        # The calibration set is one array (see deploykit.calibration): refused here, in one line, before
        # the passes that read it would each fail their own way on the inputs it does not feed.
        o = option
        raise UserInputError(f"{o('calibration')} feeds a single-input model, and this one has {len(shapes)} inputs "
                             f"({', '.join(shapes)}): int8 cannot calibrate it; for {o('bottleneck')} or {o('fp16')} "
                             f"drop {o('calibration')} (the bottleneck then fits the weights alone, and "
                             f"{o('validate')} DATA still judges the result)")
    first = next(iter(shapes.values()), None)
    if validate is not None and Path(str(validate)).suffix == ".npy" and str(validate) == str(calibration):
        loaded = load_calibration(calibration, None, first)
        return options.replace(calibration=loaded, validate=loaded)  # one copy in memory, not two
    return options.replace(calibration=load_calibration(calibration, None, first))
