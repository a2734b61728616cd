"""The fastest artefact on this machine that holds the accuracy budget, chosen across engines and precisions.

`--recipe fast` ends here. The candidates are the input in ONNX Runtime (fp32), the input in OpenVINO
(f32, and bf16 where the CPU has native bf16 kernels), the recipe's int8 model in each engine, and, where
the CPU has native bf16, that int8 model in OpenVINO with its float layers (those the budget kept out of
int8, the decoding tail) in bf16 rather than f32 ("int8+bf16"). Where the recipe's low-rank bottleneck
held the budget, the bottlenecked float model is a candidate in each float engine and precision too: the
bottleneck where it pays, without int8. Each is judged where it runs, in the engine and at the precision
it will run at, in the points of the budget's metric, against the input in ONNX Runtime; each is timed at
batch 1 in a fresh process, the candidates taking turns round by round. Among those that hold the budget
the fastest wins; one within TIE of it is a tie, and a tie goes to the more accurate: the smaller drop,
and at equal drops (a validation set of a few dozen inputs often cannot tell f32 from bf16) the outputs
nearer the input's (max relative deviation, deploykit.verify; any two under 1e-4, float32's own noise,
count as equal and the faster wins), so that noise in the timing does not flip the choice. The winner is
written with its engine and precision recorded in its metadata, so `Engine(OUT)` runs it that way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DeploykitError
from .options import DEFAULT_TOLERANCE
from .storage import float_precision

OPENVINO_SEARCHED = "budget judged in OpenVINO"  # the form of an int8 model whose float layers OpenVINO chose
TIE = 0.05  # latencies within 5% of the fastest are inside this machine's round-to-round noise: a tie


@dataclass
class Candidate:
    engine: str      # ort-cpu or ov-cpu
    precision: str   # fp32 (ORT), f32 / bf16 (OpenVINO), int8, int8+bf16 (OpenVINO: float layers in bf16)
    path: str
    drop: float | None = None        # points of the metric lost against the input in ORT
    deviation: float | None = None   # max relative deviation of its outputs from the input's in ORT
    latency_ms: float | None = None  # median at batch 1
    speedup: float | None = None     # over the input in ORT fp32, measured in the same rounds
    verdict: str = ""                # "chosen", or why it lost
    form: str = ""                   # what was done to the float model first, e.g. "bottleneck time=0.7"

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}" + (f" ({self.form})" if self.form else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def choose(candidates: list[Candidate], budget: float, tie: float = TIE) -> Candidate:
    """The winner among measured candidates (drop and latency filled in), with every loser's verdict set."""
    holding = [c for c in candidates if c.drop is not None and c.latency_ms is not None and c.drop <= budget]
    for c in candidates:
        if c.latency_ms is None:
            c.verdict = c.verdict or "could not be timed"
        elif c.drop is None:
            c.verdict = c.verdict or "could not be judged"
        elif c.drop > budget:
            c.verdict = f"costs {c.drop:.2f} points, over the budget of {budget:g}"
    if not holding:
        raise DeploykitError("no candidate holds the accuracy budget, not even the input in ONNX Runtime")
    fastest = min(holding, key=lambda c: c.latency_ms)
    tied = [c for c in holding if c.latency_ms <= fastest.latency_ms * (1 + tie)]
    winner = min(tied, key=lambda c: (c.drop, _deviation(c), c.latency_ms))
    for c in holding:
        if c is winner:
            c.verdict = "chosen"
        elif c in tied:
            if c.drop > winner.drop:
                c.verdict = f"as fast within {tie:.0%} (a tie), and {c.drop - winner.drop:.2f} points less accurate"
            elif _deviation(c) > _deviation(winner):
                c.verdict = (f"as fast within {tie:.0%} (a tie), as accurate, and further from the input's outputs "
                             f"(max rel deviation {_shown(c.deviation)} against {_shown(winner.deviation)})")
            else:
                c.verdict = f"a tie within {tie:.0%}, {c.latency_ms / winner.latency_ms:.2f}x the winner's latency"
        else:
            c.verdict = f"{c.latency_ms / winner.latency_ms:.2f}x slower than {winner.label}"
    return winner


def _shown(deviation: float | None) -> str:
    return "unmeasured" if deviation is None else f"{deviation:.1e}"


def _deviation(c: Candidate) -> float:
    """The deviation as the tie-break compares it: within float32 noise (what an exact pass may move the outputs
    by) every candidate is as near as the input itself, so that noise does not pick the winner either."""
    if c.deviation is None:
        return float("inf")
    return 0.0 if c.deviation <= DEFAULT_TOLERANCE else c.deviation


def candidates_for(source: Path, int8_model: Path | None, bottlenecked: tuple[Path, str] | None = None,
                   int8_for_openvino: Path | None = None) -> tuple[list[Candidate], list[str]]:
    """The candidates this machine can run, and what is left out and why. `bottlenecked`: (the float model
    with the recipe's bottleneck, its spec), tried in every float engine and precision the source is.
    `int8_for_openvino`: an int8 model whose budget was judged in OpenVINO, tried there as int8 and int8+bf16."""
    from .backends import get_backend
    from .machine import has_native_bf16

    found = [Candidate("ort-cpu", "fp32", str(source))]
    skipped = []
    if get_backend("ov-cpu").available()[0]:
        found.append(Candidate("ov-cpu", "f32", str(source)))
        try:
            native = has_native_bf16()
        except Exception:  # OpenVINO could not say: no bf16 candidate
            native = False
        if native:
            found.append(Candidate("ov-cpu", "bf16", str(source)))
        else:
            skipped.append("ov-cpu bf16 (this CPU has no native bf16)")
    else:
        skipped.append("ov-cpu (pip install 'deploykit[openvino]')")
    if bottlenecked is not None:
        path, spec = bottlenecked
        found += [Candidate(c.engine, c.precision, str(path), form=f"bottleneck {spec}") for c in list(found)]
    if int8_model is not None:
        found.append(Candidate("ort-cpu", "int8", str(int8_model)))
        if any(c.engine == "ov-cpu" for c in found):
            found.append(Candidate("ov-cpu", "int8", str(int8_model)))
            if any(c.label == "ov-cpu bf16" for c in found):
                found.append(Candidate("ov-cpu", "int8+bf16", str(int8_model)))
    if int8_for_openvino is not None and any(c.engine == "ov-cpu" for c in found):
        found.append(Candidate("ov-cpu", "int8", str(int8_for_openvino), form=OPENVINO_SEARCHED))
        if any(c.label == "ov-cpu bf16" for c in found):
            found.append(Candidate("ov-cpu", "int8+bf16", str(int8_for_openvino), form=OPENVINO_SEARCHED))
    return found, skipped


def _engine_for(candidate: Candidate):
    from .runtime import Engine

    if candidate.engine == "ov-cpu":
        precision = float_precision(candidate.precision)
        return Engine(candidate.path, providers="openvino", precision=precision)
    return Engine(candidate.path, providers="cpu")


def judge_in_engine(candidates: list[Candidate], judge) -> None:
    """Each candidate's drop in points of the judge's metric, its outputs computed in its own engine."""
    from .validation import run_batched

    feeds = judge.validation.feeds
    total = len(next(iter(feeds.values())))
    for c in candidates:
        try:
            engine = _engine_for(c)
            first = next(iter(engine.inputs), (None, None, None))[1]
            fixed = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
            if fixed and total % fixed:  # run_batched would leave the last samples out of one side only
                c.verdict = f"cannot be judged: its batch is fixed at {fixed}, the validation set has {total} samples"
                continue
            outputs = run_batched(engine, feeds)
            engine.close()
            c.drop = judge.drop_of_outputs(outputs)
            c.deviation = _max_deviation(judge.reference_outputs, outputs)
        except DeploykitError as exc:
            c.verdict = f"cannot run here: {exc}"


def _max_deviation(reference, outputs) -> float | None:
    """The largest max relative deviation over the outputs (deploykit.verify); None where shapes differ."""
    from .verify import compare, worst

    try:
        return worst(compare([str(i) for i in range(len(reference))], reference, outputs)).max_rel
    except ValueError:
        return None


def time_side_by_side(candidates: list[Candidate], input_shape, rounds: int = 3, seconds: float = 0.3) -> None:
    """Median batch-1 latency of each candidate, each timing in a fresh process, taking turns round by round."""
    import onnx

    from .bench import run_one
    from .signature import read_signature
    from .timing import interleaved, median

    shapes = read_signature(onnx.load(candidates[0].path, load_external_data=False)).resolve(input_shape)
    spec = {"batch": 1, "warmup": 5, "duration": seconds,
            "input_shape": {name: list(shape) for name, shape in shapes.items()}}
    failed: dict[str, str] = {}
    by_label = {c.label: c for c in candidates if not c.verdict.startswith("cannot run")}

    def measure(label):
        c = by_label[label]
        if label in failed:
            return []
        backend = c.engine + (":bf16" if float_precision(c.precision) == "bf16" else "")
        try:
            return run_one({**spec, "artefact": c.path, "backend": backend})["latencies_s"]
        except DeploykitError as exc:
            failed[label] = str(exc)
            return []

    samples = interleaved({label: label for label in by_label}, rounds, measure)
    for label, values in samples.items():
        if label in failed or not values:
            by_label[label].verdict = f"cannot run here: {failed.get(label, 'no timing')}"
        else:
            by_label[label].latency_ms = 1e3 * median(values)
    reference = next((c for c in candidates if c.engine == "ort-cpu" and c.precision == "fp32" and not c.form), None)
    for c in candidates:
        if c.latency_ms and reference is not None and reference.latency_ms:
            c.speedup = reference.latency_ms / c.latency_ms


def write_winner(winner: Candidate, output: Path, inputs=()) -> None:
    """The winner at `output` with its engine and precision in the metadata Engine reads."""
    from . import storage

    model = storage.load_model(winner.path)
    storage.set_metadata(model, {
        storage.DEPLOYMENT_ENGINE_KEY.removeprefix(storage.METADATA_PREFIX): winner.engine,
        storage.DEPLOYMENT_PRECISION_KEY.removeprefix(storage.METADATA_PREFIX): winner.precision})
    storage.save_model(model, output, external_weights=storage.has_external_data(winner.path), inputs=inputs)


def plot_candidates(candidates: list[dict], budget: float, path: Path, inputs=()) -> None:
    """Speed against accuracy: each candidate's speed-up over ORT fp32 against the points it costs, the budget
    as a line, the chosen one marked; written atomically as a PNG (the recipe's `--report` beside its JSON)."""
    from .plotting import pyplot, save_png

    plt = pyplot("the recipe's plot")
    measured = [c for c in candidates if c.get("drop") is not None and c.get("speedup")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in measured:
        chosen = c.get("verdict") == "chosen"
        ax.scatter(c["drop"], c["speedup"], s=80 if chosen else 40, marker="*" if chosen else "o",
                   color="tab:green" if chosen else ("tab:red" if c["drop"] > budget else "tab:blue"), zorder=3)
        ax.annotate(c["label"], (c["drop"], c["speedup"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(budget, color="grey", linestyle="--", label=f"budget {budget:g} point(s)")
    ax.axhline(1.0, color="lightgrey", linewidth=0.8)
    ax.set_xlabel("accuracy cost against the input (points of the metric)")
    ax.set_ylabel("speed-up over ONNX Runtime fp32 (batch 1)")
    ax.set_title("--recipe fast: the candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, inputs)
