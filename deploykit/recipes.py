"""Recipes: a stack of passes and a choice of engine, decided for the user under an accuracy budget.

`fast` stacks what pays on the CPU: fold, a low-rank bottleneck under a measured time budget, and int8
under the accuracy budget, in a graph both ONNX Runtime and OpenVINO run; the budget (1 point by default)
holds for the whole result against the input: the bottleneck is tried at time=0.5, then milder budgets,
then left out, until it does. Where a bottleneck held, the float model with that bottleneck alone is built
too (judged against the same budget), for the float engines: in bf16 or f32 it can beat every int8 form.
Then every engine and precision the machine offers is judged in the engine that runs it and timed side by
side (deploykit.choice), and the fastest that holds the budget is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import storage
from .errors import BudgetNotHeld, UnreachableBudget, UserInputError, VerificationError, option
from .pipeline import OptimizeReport, load_calibration_once, run_options, total_drop, whole_result_within
from .options import DEFAULT_ACCURACY_DROP, RECIPES, OptimizeOptions  # noqa: F401  (RECIPES: the recipes here)
# The time budgets the fast recipe tries, deepest first, until the whole result holds the accuracy budget;
# None is int8 alone.
FAST_BOTTLENECKS = ("time=0.5", "time=0.7", "time=0.85", None)


def run_recipe(model_path, output_path, options: OptimizeOptions, *, progress=None) -> OptimizeReport:
    """Run `options.recipe` (checked by OptimizeOptions.check) on the model; see the module docstring."""
    budget = DEFAULT_ACCURACY_DROP if options.max_accuracy_drop is None else options.max_accuracy_drop
    # Read once: every try below, the float fallback and the engines' judging use the same arrays.
    options = load_calibration_once(model_path, options)
    # An asked-for bottleneck is tried first, then int8 alone, as the ladder ends.
    tries = (options.bottleneck, None) if options.bottleneck else FAST_BOTTLENECKS
    holds = whole_result_within(budget)
    refusals = []
    report = None
    for spec in tries:
        if progress:
            progress(f"recipe fast: bottleneck {spec or 'none'} + int8")
        step = int8_step(options, spec, budget, judge_in="ort")
        try:
            step.check()
            report = run_options(model_path, output_path, step, progress=progress, accept=holds)
        except (BudgetNotHeld, UnreachableBudget) as exc:
            refusals.append(f"bottleneck {spec}: {str(exc).removesuffix('; nothing was written')}")
            continue
        except VerificationError as exc:  # int8 alone cannot hold the budget at this step
            refusals.append(f"bottleneck {spec or 'none'}: {exc}")
            continue
        report.recipe = {"name": options.recipe, "bottleneck": spec, "accuracy_budget": budget,
                         "drop": total_drop(report), "refused": refusals}
        break
    int8_model = output_path if report is not None else None
    if report is None:
        if output_path is None:
            raise VerificationError(f"{option('recipe')} fast cannot hold the accuracy budget of {budget:g} "
                                    "point(s) in int8: " + "; ".join(refusals) + "; nothing was written")
        # No int8 form holds: the float model, in the engine and precision that run it fastest, may still.
        report = run_options(model_path, None, OptimizeOptions(fold=False, fuse=False, input_shape=options.input_shape,
                                                               tolerance=options.tolerance, validate=options.validate))
        report.recipe = {"name": options.recipe, "bottleneck": None, "accuracy_budget": budget, "drop": None,
                         "refused": refusals}
    if output_path is not None:
        spec = report.recipe["bottleneck"]
        # Beside the output, so that nothing is written outside where the user asked; removed when chosen.
        # One judge for every candidate below: the validation set is read and the input run on it once.
        judge = recipe_judge(model_path, options)
        with tempfile.TemporaryDirectory(prefix=".deploykit-", dir=Path(output_path).parent) as folder:
            bottlenecked, refused = (bottleneck_alone(model_path, Path(folder), options, spec, budget, progress)
                                     if spec else (None, None))
            int8_for_openvino, refused_in_openvino = (
                int8_judged_in_openvino(model_path, Path(folder), int8_model, judge, options, spec, budget, progress)
                if int8_model is not None else (None, None))
            if progress:
                progress("recipe fast: judging and timing each engine and precision side by side")
            report.recipe.update(choose_deployment(model_path, int8_model, output_path, options, budget, judge,
                                                   bottlenecked=bottlenecked, int8_for_openvino=int8_for_openvino))
            report.recipe["not_compared"] += [why for why in (refused, refused_in_openvino) if why]
    return report


def int8_step(options: OptimizeOptions, spec: str | None, budget: float, judge_in: str) -> OptimizeOptions:
    """One int8 build of the recipe: bottleneck `spec` (None: none) and int8 under `budget`, judged in `judge_in`,
    in a graph both engines run."""
    return options.replace(recipe=None, fuse=False, target="openvino", bottleneck=spec, int8=True,
                           bottleneck_layers=options.bottleneck_layers if spec else None,
                           max_accuracy_drop=budget, judge_in=judge_in)


def recipe_judge(source, options: OptimizeOptions):
    """The AccuracyJudge of the recipe's candidates: the budget's metric on the validation set (else the calibration
    data), against the input in ONNX Runtime; refused where the model cannot be scored that way."""
    from .signature import read_signature
    from .validation import AccuracyJudge, load_validation

    signature = read_signature(storage.load_model(source, load_weights=False))
    shapes = signature.resolve(options.input_shape)
    validation = load_validation(options.validate, signature, shapes, calibration=options.calibration)
    judge = AccuracyJudge(str(source), validation, options.metric)
    if judge.baseline is None:
        raise UserInputError(f"{option('recipe')} fast judges each engine by a task metric, and this model's first "
                             f"output has no class axis: give {option('metric')} (detection, ctc, mask-iou or "
                             "PATH.py:FUNCTION)")
    return judge


def int8_judged_in_openvino(model_path, folder: Path, int8_model, judge, options: OptimizeOptions,
                            spec: str | None, budget: float, progress=None):
    """(int8 with its budget searched in OpenVINO, None or why the bottleneck was left out of it), or (None, why
    not): OpenVINO's int8 kernels round differently from ONNX Runtime's, so the layers ORT's search kept in float
    may not be the ones OpenVINO needs.
    (None, None) where OpenVINO is missing, or `int8_model` (ORT's search) already holds the budget there.

    Tried with the bottleneck ORT's search kept (`spec`), then without one: a bottleneck that held in ONNX
    Runtime may not in OpenVINO, and its time budget is re-measured, so it can be refused the second time."""
    from .backends import get_backend

    if not get_backend("ov-cpu").available()[0]:
        return None, None  # the OpenVINO candidates are all left out, and said so once
    if judge.drop_of(str(int8_model), engine="openvino") <= budget:
        return None, None  # ORT's search already holds there: a second search would keep the same or more in float
    path = folder / "int8_openvino.onnx"
    refusals = []
    for tried in dict.fromkeys((spec, None)):
        if progress:
            progress(f"recipe fast: bottleneck {tried or 'none'} + int8, the budget judged in OpenVINO")
        step = int8_step(options, tried, budget, judge_in="openvino")
        try:
            step.check()
            run_options(model_path, path, step, progress=progress, accept=whole_result_within(budget))
        except (BudgetNotHeld, UnreachableBudget, VerificationError, UserInputError) as exc:
            # UserInputError: OpenVINO refused a graph ORT's quantizer made; the int8 judged in ORT is still tried.
            refusals.append(f"bottleneck {tried or 'none'}: {str(exc).removesuffix('; nothing was written')}")
            continue
        # A refusal with the bottleneck is still said: the int8 judged in OpenVINO then has none.
        return path, ("int8 judged in OpenVINO with " + refusals[0]) if refusals else None
    return None, "int8 judged in OpenVINO: " + "; ".join(refusals)


def bottleneck_alone(model_path, folder: Path, options: OptimizeOptions, spec: str, budget: float, progress=None):
    """((the input with bottleneck `spec` and no int8, spec), None), or (None, why not) when it does not hold."""
    if progress:
        progress(f"recipe fast: bottleneck {spec} alone, for the float engines")
    step = options.replace(recipe=None, fuse=False, target="openvino", bottleneck=spec, int8=False,
                           max_accuracy_drop=budget, judge_in="ort")
    path = folder / "bottleneck.onnx"
    try:
        step.check()
        run_options(model_path, path, step, progress=progress, accept=whole_result_within(budget))
    except (BudgetNotHeld, UnreachableBudget, VerificationError) as exc:
        return None, f"bottleneck {spec} alone in float: {str(exc).removesuffix('; nothing was written')}"
    return (path, spec), None


def choose_deployment(source, int8_model, output, options: OptimizeOptions, budget: float, judge,
                      bottlenecked: tuple[Path, str] | None = None, int8_for_openvino: Path | None = None) -> dict:
    """deploykit.choice over this recipe's candidates, each judged by `judge` (recipe_judge) in its own engine:
    the winner is written at `output`; the table returned."""
    from .choice import candidates_for, choose, judge_in_engine, time_side_by_side, write_winner

    candidates, skipped = candidates_for(Path(source), Path(int8_model) if int8_model else None, bottlenecked,
                                         int8_for_openvino=int8_for_openvino)
    judge_in_engine(candidates, judge)
    time_side_by_side(candidates, options.input_shape)
    winner = choose(candidates, budget)
    write_winner(winner, Path(output), inputs=storage.model_files(source))
    return {"candidates": [c.to_dict() for c in candidates], "chosen": winner.label, "engine": winner.engine,
            "precision": winner.precision, "metric": judge.what, "not_compared": skipped,
            "thin_data": judge.thin_data_note(budget)}
