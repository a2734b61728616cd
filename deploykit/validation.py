"""The data a converted model is judged on, and the figures it is judged by.

`--validate DATA` takes what `--calibration` takes (a folder of images, an .npy array, 'digits')
plus an .npz holding `x` (or one array per input name) and optional `y` labels. Without it,
verification uses the calibration data when there is some, else random N(0, 1) samples at batch
RANDOM_SAMPLES; the report names which. A single random sample at batch 1 understated fp16 error
70x on one real model and overstated int8 error 250x on another: a handful of samples, and
real ones where the user has them, is what makes the figures mean something.

Top-1 agreement compares the arg-max of the first output over its class axis: axis 1 for (N, C)
logits and (N, C, H, W) score maps, the last axis for (N, T, C) sequences (a text recogniser's
per-step characters). A one-channel map of values in [0, 1] (a text detector's probability map) is
scored as two classes per pixel, p > 0.5 or not, by the intersection over union of the foreground
(see top1_agreement); any other single-channel output has no top-1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .feeds import BATCH  # noqa: F401  (samples per run: its home is feeds.py, callers import it here too)

RANDOM_SAMPLES = 4


@dataclass
class ValidationSet:
    feeds: dict[str, np.ndarray]  # every input, N samples along axis 0
    labels: np.ndarray | None
    source: str  # what the report says the figures were measured on

    @property
    def samples(self) -> int:
        return len(next(iter(self.feeds.values())))


def load_validation(spec, signature, shapes, *, calibration=None, seed: int = 0) -> ValidationSet:
    """The validation set for a model with this signature at these input shapes (see the module docstring)."""
    if spec is not None:
        return _from_spec(spec, signature, shapes, "validation data")
    if calibration is not None:
        found = _from_spec(calibration, signature, shapes, "calibration data")
        found.labels = None  # calibration data is not a labelled test set
        return found
    from .signature import sample_inputs

    batched = {}
    for spec_ in signature.inputs:
        shape = list(shapes[spec_.name])
        fixed = spec_.dims[0] if spec_.dims else None
        if not (isinstance(fixed, int) and fixed > 0) and shape:
            shape[0] = RANDOM_SAMPLES
        batched[spec_.name] = shape
    feeds = sample_inputs(signature, batched, seed)
    n = len(next(iter(feeds.values())))
    return ValidationSet(feeds, None, f"{n} random N(0,1) sample(s) (give --validate DATA to measure on real data)")


def _from_spec(spec, signature, shapes, kind) -> ValidationSet:
    from .calibration import load_calibration

    names = signature.input_names
    labels = None
    if isinstance(spec, np.ndarray):
        feeds = {names[0]: spec}
        label = f"{kind} ({len(spec)} samples)"
    elif str(spec) == "digits":
        from deploykit_zoo.digits_data import load_digits_split

        _, _, x_test, y_test = load_digits_split()
        feeds, labels = {names[0]: x_test.astype(np.float32)}, np.asarray(y_test)
        label = f"{kind} 'digits' (scikit-learn's digits test split, {len(x_test)} labelled images)"
    elif Path(spec).suffix == ".npz" and Path(spec).is_file():
        feeds, labels = _npz(Path(spec), names)
        label = f"{kind} {spec} ({len(next(iter(feeds.values())))} samples{', labelled' if labels is not None else ''})"
    else:
        first = shapes[names[0]]
        data = load_calibration(spec, None, first)
        feeds = {names[0]: data}
        label = f"{kind} {spec} ({len(data)} samples)"
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UserInputError(f"{kind} {spec} gives no samples for input(s) {', '.join(missing)}: save an .npz with "
                             "one array per input name")
    feeds = {n: _checked(n, feeds[n], signature.input(n), kind) for n in names}
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1:
        raise UserInputError(f"{kind} {spec}: the inputs have different sample counts ({sorted(counts)})")
    if labels is not None:
        labels = _checked_labels(labels, f"{kind} {spec}")
        if len(labels) != counts.pop():
            raise UserInputError(f"{kind} {spec}: {len(labels)} labels for {len(next(iter(feeds.values())))} samples")
    return ValidationSet(feeds, labels, label)


def _checked_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Class indices, one per sample: whole numbers >= 0 (whether each is one of the model's classes is checked
    where the outputs are known, in `accuracy`)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserInputError(f"{where}: 'y' has shape {list(labels.shape)}; give one class index per sample, shape [N] "
                             "(for one-hot labels, save y.argmax(1))")
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.all(np.isfinite(labels)
                                                                                    & (labels == np.round(labels)))):
        raise UserInputError(f"{where}: 'y' holds {labels.dtype} values that are not whole numbers; give class indices")
    if labels.size and labels.min() < 0:
        raise UserInputError(f"{where}: 'y' holds the negative label {int(labels.min())}; give class indices from 0")
    return labels.astype(np.int64)


def _npz(path: Path, names) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise UserInputError(f"cannot read {path} as .npz data ({type(exc).__name__}); save it with np.savez") from exc
    labels = arrays.pop("y", None)
    if all(n in arrays for n in names):
        feeds = {n: arrays[n] for n in names}
    elif "x" in arrays and len(names) == 1:
        feeds = {names[0]: arrays["x"]}
    else:
        raise UserInputError(f"{path} holds arrays {sorted(arrays)}: give 'x' (one input) or one array per input "
                             f"name ({', '.join(names)}), and optionally 'y' labels")
    return feeds, labels


def _checked(name, array, spec, kind) -> np.ndarray:
    array = np.asarray(array)
    if array.size == 0:
        raise UserInputError(f"{kind} for input {name!r} is empty")
    if spec.is_float:
        if array.dtype.kind not in "fiub":
            raise UserInputError(f"{kind} for input {name!r} holds {array.dtype} values, not numbers")
        array = array.astype(spec.dtype, copy=False)
        if not np.isfinite(array).all():
            raise UserInputError(f"{kind} for input {name!r} has NaN or infinite values")
    else:
        array = array.astype(spec.dtype, copy=False)
    if spec.dims is not None:
        if array.ndim == 3 and len(spec.dims) == 4:
            array = array[:, None]  # (N, H, W) grey images
        batch = spec.dims[0] if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] > 0 else 1
        why = spec.accepts((batch,) + tuple(array.shape[1:]))
        if why:
            raise UserInputError(f"{kind} for input {name!r} has samples of shape {list(array.shape[1:])}, but the "
                                 f"input expects {spec.pretty()} ({why})")
    return array


def run_batched(runner, feeds: dict[str, np.ndarray], batch: int = BATCH) -> list[np.ndarray]:
    """Every output of `runner` (an ORT session, an Engine in whatever engine it runs, or a backend Runner) over
    all samples, run `batch` at a time (see feeds.batches)."""
    from .backends.base import Runner
    from .feeds import batches

    if hasattr(runner, "get_inputs"):
        run = lambda chunk: runner.run(None, chunk)  # noqa: E731
    else:
        run = runner.infer if isinstance(runner, Runner) else runner.run
    parts: list[list[np.ndarray]] = []
    for chunk in batches(runner, feeds, batch):
        outs = run(chunk)
        if not parts:
            parts = [[] for _ in outs]
        for acc, o in zip(parts, outs):
            acc.append(np.asarray(o, dtype=np.float32))  # float32 storage: compare() widens per output
    return [np.concatenate(p) if p[0].ndim else p[0] for p in parts]


def class_axis(output: np.ndarray) -> int | None:
    if output.ndim < 2:
        return None
    axis = output.ndim - 1 if output.ndim == 3 else 1
    return axis if output.shape[axis] > 1 else None


def is_probability_map(output: np.ndarray) -> bool:
    """One channel of values in [0, 1] over a spatial grid: a per-pixel two-class score (a detector's map)."""
    return (output.ndim == 4 and output.shape[1] == 1 and output.size > 0
            and float(output.min()) >= 0.0 and float(output.max()) <= 1.0)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if reference.shape != candidate.shape:
        return None
    axis = class_axis(reference)
    if axis is None:
        if is_probability_map(reference):
            # Two classes per pixel, p > 0.5 or not, scored as the foreground's intersection over union:
            # plain pixel agreement is dominated by background (99.6% for an int8 text detector whose
            # boxes moved enough to change 3 of 4 recognised lines).
            return foreground_iou(reference, candidate)
        return None
    return float(np.mean(reference.argmax(axis) == candidate.argmax(axis)))


def per_sample_step(reference_outputs: list[np.ndarray]) -> float | None:
    """One sample of a per-sample score (accuracy, whole sequences), in points."""
    samples = len(reference_outputs[0])
    return 100.0 / samples if samples else None


def top1_step(reference_outputs: list[np.ndarray]) -> float | None:
    """One decision of top-1 agreement (a sample, or a position of a dense output), in points."""
    first = reference_outputs[0]
    axis = class_axis(first)
    return None if axis is None or not first.size else 100.0 * first.shape[axis] / first.size


def foreground_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Intersection over union of the p > 0.5 foregrounds of two maps (1.0 when both are empty)."""
    a, b = reference > 0.5, candidate > 0.5
    union = int(np.sum(a | b))
    return 1.0 if union == 0 else float(np.sum(a & b)) / union


def accuracy(output: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or output.ndim != 2 or len(labels) != len(output):
        return None
    if labels.size and int(labels.max()) >= output.shape[1]:
        raise UserInputError(f"the labels go up to class {int(labels.max())}, and the model scores {output.shape[1]} "
                             f"classes (0-{output.shape[1] - 1}): give labels of this model's classes")
    return float(np.mean(output.argmax(1) == labels.reshape(-1)))


def points(value: float) -> float:
    """A drop in points rounded past float noise: 100 x (1 - 0.99) is 1.0000000000000009, and a budget of 1
    point met exactly must hold."""
    return round(float(value), 9)


JUDGE_ENGINES = ("ort", "openvino")  # where an accuracy budget's candidates run to be judged


class EngineRefusedModel(UserInputError):
    """The engine a candidate is judged in cannot compile it."""


def openvino_outputs(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of `model` (a path or an ONNX proto) over `feeds`, compiled in OpenVINO with its float layers
    in f32. A trial is compiled once and thrown away: it stays out of OpenVINO's compiled-model cache."""
    import tempfile

    from .backends.openvino import OpenVinoRunner
    from .storage import save_model

    with tempfile.TemporaryDirectory(prefix="deploykit-judge-") as folder:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
        else:
            path = Path(folder) / "trial.onnx"
            save_model(model, path)
        try:
            runner = OpenVinoRunner(path, "f32", cache=False)
        except UserInputError as exc:
            raise EngineRefusedModel(str(exc)) from exc
        try:
            return run_batched(runner, feeds)
        finally:
            runner.close()


@dataclass
class AccuracyBudget:
    """Points of accuracy (labelled data) or of top-1 agreement one pipeline's approximating passes may spend.

    The bottleneck pass and int8 share it: with labels their drops add; without, the union bound (a
    sample the result misclassifies was flipped by at least one pass) keeps the total within the sum.
    `asked` is False for the default budget, where a model with no class axis is noted, not refused.
    """

    total: float
    asked: bool = True
    spent: float = 0.0
    metric: object = None  # a deploykit.metrics.Metric: the points the budget is in (None: the default)
    judged_in: str = "ort"  # where candidates run to be judged: "ort" (ONNX Runtime) or "openvino"

    @property
    def left(self) -> float:
        return self.total - self.spent


class AccuracyJudge:
    """Scores candidate models on a validation set against a reference (float) model.

    The score is the budget's task metric (deploykit.metrics) where one was chosen; else accuracy with
    labels, else top-1 agreement with the reference's outputs, in percent. `drop_of(model)` is the
    reference's score less the candidate's. `baseline` is None when the model cannot be scored that way
    (the default's first output has no class axis, see class_axis). The reference always runs in ONNX
    Runtime; candidates run in `engine`: "ort", or "openvino" (compiled with its float layers in f32, as
    the recipe's "ov-cpu int8" runs), for a model meant for OpenVINO, whose int8 kernels round differently.
    """

    def __init__(self, reference_model, validation: ValidationSet, metric=None, engine: str = "ort"):
        from .verify import cpu_session

        if engine not in JUDGE_ENGINES:
            raise UserInputError(f"unknown engine to judge in {engine!r}: choose {' or '.join(JUDGE_ENGINES)}")
        self.validation = validation
        self.metric = metric
        self.engine = engine
        self.reference_outputs = run_batched(cpu_session(reference_model), validation.feeds)
        self.reference = self.reference_outputs[0]
        if metric is not None:
            self.what = metric.describe()
        else:
            self.what = "accuracy" if validation.labels is not None else "top-1 agreement with the float model"
        if engine == "openvino":
            self.what += ", judged in OpenVINO"
        self.baseline = self.score_outputs(self.reference_outputs)

    def score(self, outputs: np.ndarray) -> float | None:
        """The default score of a first output: accuracy with labels, else top-1 agreement, in percent."""
        labels = self.validation.labels
        value = accuracy(outputs, labels) if labels is not None else top1_agreement(self.reference, outputs)
        return None if value is None else 100.0 * value

    def score_outputs(self, outputs: list[np.ndarray]) -> float | None:
        if self.metric is not None:
            return self.metric.score(self.reference_outputs, outputs, self.validation.labels)
        return self.score(outputs[0])

    def smallest_step(self) -> float | None:
        """The smallest change of the score one sample (or box) of this validation set can make, in points."""
        if self.metric is not None:
            return self.metric.smallest_step(self.reference_outputs)
        if self.validation.labels is not None:
            return per_sample_step(self.reference_outputs)
        return top1_step(self.reference_outputs)

    def thin_data_note(self, allowance: float) -> str | None:
        """Said where one sample moves the score by more than the budget: such a budget holds only where nothing
        changes on these samples, and the search that fits it is selected on them."""
        step = self.smallest_step()
        if step is None or step <= allowance:
            return None
        return (f"on {self.validation.source} the smallest change one sample (or box, or position) can make to "
                f"{self.what} is {step:.2f} points, over the {allowance:.2f} allowed: the budget means nothing may "
                "change on this data, and a result chosen on so few samples may not hold on others; validate on more")

    def drop_of(self, model, engine: str | None = None) -> float:
        """Points lost against the reference, the candidate run in `engine` (default: the judge's); infinite where
        that engine cannot compile it (OpenVINO refuses some partly quantized graphs its fusions trip on): it
        cannot hold a budget where it cannot run."""
        try:
            outputs = self.outputs_of(model, engine)
        except EngineRefusedModel:
            return math.inf
        return self.drop_of_outputs(outputs)

    def drop_of_outputs(self, outputs: list[np.ndarray]) -> float:
        return points(self.baseline - self.score_outputs(outputs))

    def outputs_of(self, model, engine: str | None = None) -> list[np.ndarray]:
        """Every output of `model` (a path or an ONNX proto) over the validation set, run in `engine` (default: the
        judge's)."""
        from .verify import cpu_session

        if (engine or self.engine) == "ort":
            return run_batched(cpu_session(model), self.validation.feeds)
        return openvino_outputs(model, self.validation.feeds)

    @classmethod
    def for_budget(cls, reference_model, validation: ValidationSet | None,
                   budget: AccuracyBudget) -> "AccuracyJudge | None":
        """The judge of a pass under `budget`, or None where the model cannot be judged and the budget is only
        the default; refuses a missing validation set, and an explicit budget on a model with no class axis."""
        if validation is None:
            raise UserInputError("--max-accuracy-drop needs data to judge by: give --validate DATA")
        judge = cls(reference_model, validation, getattr(budget, "metric", None),
                    engine=getattr(budget, "judged_in", "ort"))
        if judge.baseline is not None:
            return judge
        if budget.asked:
            raise UserInputError("--max-accuracy-drop needs a classifier-like first output (class scores) to "
                                 "measure accuracy or top-1 agreement on; this model's has no class axis")
        return None
