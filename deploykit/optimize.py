"""`deploykit optimize` as a function: options in, a verified model and its report out.

The work lives below: deploykit.options (what was asked, checked in one place), deploykit.passes (the
registry build_pipeline reads), deploykit.pipeline (running passes and proving each), deploykit.recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import BudgetNotHeld  # noqa: F401  (its old home)
from .options import DEFAULT_ACCURACY_DROP, DEFAULT_TOLERANCE, OptimizeOptions  # noqa: F401
from .pipeline import (  # noqa: F401  (the pipeline's names, where callers have always found them)
    OptimizeReport,
    PassReport,
    resolve_input_shapes,
    run_options,
    run_pipeline,
    total_drop,
)


def optimize_model(model_path: str | Path, output_path: str | Path | None = None,
                   options: OptimizeOptions | None = None, *, progress: Callable[[str], None] | None = None,
                   accept: Callable[[OptimizeReport], str | None] | None = None, **keywords) -> OptimizeReport:
    """`deploykit optimize` as a function: build the pipeline for these options and run it verified.

    `options` is a deploykit.options.OptimizeOptions; its fields may be given as keywords instead (or on top).
    recipe="fast" hands over to deploykit.recipes. `accept(report)` (optional) returns None to accept the
    result or the reason it is refused (BudgetNotHeld, nothing written); with an accuracy budget the whole
    result is held to it against the input.
    """
    from .metrics import parse_metric

    options = OptimizeOptions.of(options, **keywords)
    options = options.replace(metric=parse_metric(options.metric))
    options.check()
    if options.recipe is not None:
        from .recipes import run_recipe

        return run_recipe(model_path, output_path, options, progress=progress)
    return run_options(model_path, output_path, options, progress=progress, accept=accept)
