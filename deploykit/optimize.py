"""The optimisation pipeline: run passes in order, and prove each one numerically as it goes.

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

from . import io
from .errors import BudgetNotHeld, UserInputError, VerificationError  # noqa: F401  (BudgetNotHeld: its old home)
from .verify import compare, cpu_session, worst

DEFAULT_TOLERANCE = 1e-4
DEFAULT_ACCURACY_DROP = 1.0  # points of accuracy (or top-1 agreement) int8 may cost when --validate is given


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
    from .inspect import inspect_model

    report = inspect_model(model, shapes, weights=False) if isinstance(model, (str, Path)) else \
        inspect_model(model, shapes)
    return len(report.layers), report.totals.params, report.totals.macs


@contextlib.contextmanager
def _staged(model):
    """`model` (onnx_ir) saved to a private temporary folder, weights over 1 KiB in a side file; yields the path."""
    import onnx_ir as ir

    with io.temporary(Path(tempfile.mkdtemp(prefix="deploykit-stage-"))) as folder:
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

    inputs = io.model_files(model_path) + [Path(d) for d in (validate, calibration)
                                           if isinstance(d, (str, Path)) and Path(d).is_file()]
    if output_path is not None:
        io.check_output_path(output_path, inputs)
    # The graph without its external weights: a large model's weights stay on disk, mapped by onnx_ir
    # below and read by ONNX Runtime from the file, never copied into a protobuf.
    from .inspect import _weightless_copy

    proto = _weightless_copy(io.load_model(model_path, load_weights=False))
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
    for p in passes:
        if getattr(p, "input_shapes", "absent") is None:
            p.input_shapes = shapes  # passes that sample the model (fp16's overflow guard) run at these shapes
        if getattr(p, "validation", "absent") is None:
            p.validation = validation  # passes that judge themselves (int8's accuracy budget) use the same data
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
            p.name, p.exact, result.modified, list(p.notes), stats[0], after[0], stats[1], after[1],
            stats[2], after[2], deviation.max_abs, deviation.max_rel, step.max_abs, step.max_rel, seconds, figures))
        stats = after
        if p.exact and step.max_rel > exact_limit:
            floor = (f" (twice the model's own float32 noise, {evaluator.noise_floor:.2g})"
                     if exact_limit > tolerance else "")
            raise VerificationError(f"pass {p.name} changed the model's outputs beyond tolerance {exact_limit:.3g}"
                                    f"{floor}: {step.describe()}; nothing was written")
        if max_error is not None and deviation.max_rel > max_error:
            raise VerificationError(f"after pass {p.name} the outputs deviate by {deviation.max_rel:.3g} relative, "
                                    f"above --max-error {max_error:g}: {deviation.describe()}; nothing was written")
    refusal = accept(report) if accept is not None else None
    if refusal:
        raise BudgetNotHeld(refusal, report)
    if output_path is not None:
        del evaluator  # the reference outputs are no longer needed
        io.save_ir_model(model, output_path, inputs=inputs, metadata={
            "passes": ",".join(p.name for p in passes),
            "optimize_max_rel": f"{max((r.max_rel for r in report.passes), default=0.0):.3e}"})
    return report


def _choose_deployment(source, int8_model, output, validate, calibration, input_shape, metric, budget) -> dict:
    """deploykit.choice over this recipe's candidates: the winner is written at `output`; the table returned."""
    from .choice import candidates_for, choose, judge_in_engine, time_side_by_side, write_winner
    from .signature import read_signature
    from .validation import AccuracyJudge, load_validation

    proto = io.load_model(source, load_weights=False)
    signature = read_signature(proto)
    shapes = signature.resolve(input_shape)
    validation = load_validation(validate, signature, shapes, calibration=calibration)
    judge = AccuracyJudge(str(source), validation, metric)
    if judge.baseline is None:
        raise UserInputError("--recipe fast judges each engine by a task metric, and this model's first output has "
                             "no class axis: give --metric (detection, ctc, mask-iou or PATH.py:FUNCTION)")
    candidates, skipped = candidates_for(Path(source), Path(int8_model) if int8_model else None)
    judge_in_engine(candidates, judge)
    time_side_by_side(candidates, input_shape)
    winner = choose(candidates, budget)
    write_winner(winner, Path(output), inputs=io.model_files(source))
    return {"candidates": [c.to_dict() for c in candidates], "chosen": winner.label, "engine": winner.engine,
            "precision": winner.precision, "metric": judge.what, "not_compared": skipped}


def _tidy(model) -> None:
    """Drop what a rewrite left unread (old weights, dead nodes) so the next pass and the stats see the real graph."""
    import onnx_ir.passes.common as common

    common.RemoveUnusedNodesPass()(model)


RECIPES = ("fast",)
# The time budgets the fast recipe tries, deepest first, until the whole result holds the accuracy budget;
# None is int8 alone.
FAST_BOTTLENECKS = ("time=0.5", "time=0.7", "time=0.85", None)


def total_drop(report: OptimizeReport) -> float | None:
    """Points of accuracy (labelled data) or of top-1 agreement the whole pipeline cost against its input."""
    if not report.passes:
        return 0.0
    last = report.passes[-1]
    if last.validation.get("metric_after") is not None:
        return last.validation["metric_before"] - last.validation["metric_after"]
    if last.accuracy_before is not None and last.accuracy_after is not None:
        return 100.0 * (last.accuracy_before - last.accuracy_after)
    return None if last.top1_agreement is None else 100.0 * (1.0 - last.top1_agreement)


def _whole_result_within(budget: float):
    """An accept() for run_pipeline: the whole result's drop against the input stays within `budget` points."""
    def holds(report):
        drop = total_drop(report)
        if drop is not None and drop > budget:
            last = report.passes[-1]
            what = (last.validation.get("metric") or
                    ("accuracy" if last.accuracy_after is not None else "top-1 agreement"))
            return (f"the result costs {drop:.2f} points of {what} "
                    f"against the input, over --max-accuracy-drop {budget:g}; nothing was written")
        return None
    return holds


def optimize_model(model_path, output_path=None, *, fold=True, fuse=True, target="ort", fc_to_conv=False,
                   bottleneck=None, bottleneck_layers=None, fp16=False, fp16_io=False, int8=False,
                   calibration=None, calibration_method=None, ort_layout=False, input_shape=None,
                   tolerance=DEFAULT_TOLERANCE, max_error=None, progress=None, validate=None, int8_exclude=(),
                   max_accuracy_drop=None, recipe=None, metric=None, int8_quantize_tail=False,
                   _accept=None) -> OptimizeReport:
    """`deploykit optimize` as a function: build the pipeline for these options and run it verified.

    recipe="fast" stacks what pays on the CPU: fold, a low-rank bottleneck under a measured time budget,
    and int8 under the accuracy budget, in a graph both ONNX Runtime and OpenVINO run. The budget
    (--max-accuracy-drop, 1 point by default) holds for the whole result against the input: the
    bottleneck is tried at time=0.5, then milder budgets, then left out, until it does.
    """
    from .errors import UserInputError
    from .passes import build_pipeline
    from .errors import UnreachableBudget

    from .metrics import parse_metric

    metric = parse_metric(metric)
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserInputError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        if calibration is None:
            raise UserInputError("--recipe fast quantizes to int8: give --calibration DATA (and --validate DATA to "
                                 "judge the accuracy budget on data of your own)")
        if fp16 or fc_to_conv or ort_layout or int8:
            raise UserInputError("--recipe fast chooses its own passes: drop --fp16, --int8, --fc-to-conv and "
                                 "--ort-layout (or run them without the recipe)")
        budget = DEFAULT_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
        tries = (bottleneck,) if bottleneck else FAST_BOTTLENECKS
        holds = _whole_result_within(budget)

        refusals = []
        report = None
        for spec in tries:
            if progress:
                progress(f"recipe fast: bottleneck {spec or 'none'} + int8")
            try:
                report = optimize_model(model_path, output_path, fold=fold, fuse=False, target="openvino",
                                        bottleneck=spec, bottleneck_layers=bottleneck_layers if spec else None,
                                        int8=True, calibration=calibration, calibration_method=calibration_method,
                                        input_shape=input_shape, tolerance=tolerance, max_error=max_error,
                                        progress=progress, validate=validate, int8_exclude=int8_exclude,
                                        max_accuracy_drop=budget, metric=metric,
                                        int8_quantize_tail=int8_quantize_tail, _accept=holds)
            except (BudgetNotHeld, UnreachableBudget) as exc:
                refusals.append(f"bottleneck {spec}: {str(exc).removesuffix('; nothing was written')}")
                continue
            except VerificationError as exc:  # int8 alone cannot hold the budget at this step
                refusals.append(f"bottleneck {spec or 'none'}: {exc}")
                continue
            report.recipe = {"name": recipe, "bottleneck": spec, "accuracy_budget": budget,
                             "drop": total_drop(report), "refused": refusals}
            break
        int8_model = output_path if report is not None else None
        if report is None:
            if output_path is None:
                raise VerificationError("--recipe fast cannot hold the accuracy budget of "
                                        f"{budget:g} point(s) in int8: " + "; ".join(refusals) + "; nothing was written")
            # No int8 form holds: the float model, in the engine and precision that run it fastest, may still.
            report = optimize_model(model_path, None, fold=False, fuse=False, input_shape=input_shape,
                                    tolerance=tolerance, validate=validate)
            report.recipe = {"name": recipe, "bottleneck": None, "accuracy_budget": budget, "drop": None,
                             "refused": refusals}
        if output_path is not None:
            if progress:
                progress("recipe fast: judging and timing each engine and precision side by side")
            report.recipe.update(_choose_deployment(model_path, int8_model, output_path, validate, calibration,
                                                    input_shape, metric, budget))
        return report

    if calibration is not None and not isinstance(calibration, np.ndarray) and (int8 or fp16 or bottleneck):
        # Read (and refuse bad data) before any pass runs, once for every pass that uses it.
        from .calibration import load_calibration

        proto = io.load_model(model_path, load_weights=False)
        shapes = resolve_input_shapes(proto, input_shape)
        if len(shapes) > 1:
            # The calibration set is one array (see deploykit.calibration): refused here, in one line, before
            # the passes that read it would each fail their own way on the inputs it does not feed.
            raise UserInputError(f"--calibration feeds a single-input model, and this one has {len(shapes)} inputs "
                                 f"({', '.join(shapes)}): int8 cannot calibrate it; for --bottleneck or --fp16 drop "
                                 "--calibration (the bottleneck then fits the weights alone, and --validate DATA "
                                 "still judges the result)")
        first = next(iter(shapes.values()), None)
        same_file = validate is not None and Path(str(validate)).suffix == ".npy" and str(validate) == str(calibration)
        if same_file:
            validate = calibration = load_calibration(calibration, None, first)  # one copy in memory, not two
        else:
            calibration = load_calibration(calibration, None, first)
    budget_asked = max_accuracy_drop is not None
    if (int8 or bottleneck) and validate is not None and max_accuracy_drop is None:
        max_accuracy_drop = DEFAULT_ACCURACY_DROP  # real data to judge by: int8 and bottlenecks hold a budget by default
    if max_accuracy_drop is not None and _accept is None:
        _accept = _whole_result_within(max_accuracy_drop)
    passes = build_pipeline(fold=fold, fuse=fuse, target=target, fc_to_conv=fc_to_conv, bottleneck=bottleneck,
                            bottleneck_layers=bottleneck_layers, fp16=fp16, fp16_io=fp16_io, int8=int8,
                            calibration=calibration, calibration_method=calibration_method, ort_layout=ort_layout,
                            int8_exclude=tuple(int8_exclude or ()), max_accuracy_drop=max_accuracy_drop,
                            budget_asked=budget_asked, metric=metric, int8_quantize_tail=int8_quantize_tail)
    return run_pipeline(model_path, passes, output_path, input_shape=input_shape, tolerance=tolerance,
                        max_error=max_error, progress=progress, validate=validate,
                        calibration=calibration if calibration is not None else None, accept=_accept,
                        metric=metric)
