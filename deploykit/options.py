"""What `deploykit optimize` (and `deploykit.optimize_model`) is asked to do, in one frozen object.

The CLI maps its flags onto these fields and the Python API takes them as keywords; both then go
through `OptimizeOptions.check`, so a contradiction is refused the same way, in one place, before any
work. Messages name options the way the caller spelled them (see deploykit.errors.option).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UserInputError, option

DEFAULT_TOLERANCE = 1e-4
DEFAULT_ACCURACY_DROP = 1.0  # points of the task metric int8 may cost when validation data is given
TARGETS = ("ort", "tensorrt", "openvino")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
RECIPES = ("fast",)  # see deploykit.recipes


@dataclass(frozen=True)
class OptimizeOptions:
    """Every option of optimize. Defaults are the CLI's; `check()` refuses what would be ignored or contradicts."""

    fold: bool = True
    fuse: bool = True
    target: str = "ort"
    fc_to_conv: bool = False
    bottleneck: str | None = None
    bottleneck_layers: tuple[str, ...] | None = None
    fp16: bool = False
    fp16_io: bool = False
    int8: bool = False
    calibration: Any = None  # a folder of images, an .npy/.npz file, 'digits', or an array already loaded
    calibration_method: str | None = None
    int8_exclude: tuple[str, ...] = ()
    int8_quantize_tail: bool = False
    int8_bias_correction: bool = False
    int8_equalize: bool = False
    ort_layout: bool = False
    validate: Any = None
    max_accuracy_drop: float | None = None
    metric: Any = None  # a name, 'PATH.py:FUNCTION', or a deploykit.metrics.Metric
    judge_in: str | None = None  # where the budget is judged: ort or openvino; None follows the target
    recipe: str | None = None
    input_shape: Any = None
    tolerance: float = DEFAULT_TOLERANCE
    max_error: float | None = None

    def __post_init__(self):
        # Lists from callers become tuples: the object is hashable and cannot change under a running pipeline.
        if self.bottleneck_layers is not None and not isinstance(self.bottleneck_layers, tuple):
            object.__setattr__(self, "bottleneck_layers", tuple(self.bottleneck_layers))
        if not isinstance(self.int8_exclude, tuple):
            object.__setattr__(self, "int8_exclude", tuple(self.int8_exclude or ()))

    @classmethod
    def from_keywords(cls, **keywords) -> OptimizeOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise UserInputError(f"unknown optimize option(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
        return cls(**keywords)

    @classmethod
    def of(cls, options: OptimizeOptions | None = None, **keywords) -> OptimizeOptions:
        """What an API call asked for: `options`, its fields given as keywords instead, or keywords on top of it."""
        if options is None:
            return cls.from_keywords(**keywords)
        return options.replace(**keywords) if keywords else options

    def replace(self, **changes) -> OptimizeOptions:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Refuse options that contradict each other or would be silently ignored; one line each."""
        o = option
        if self.target not in TARGETS:
            raise UserInputError(f"unknown target {self.target!r}: choose ort, tensorrt or openvino")
        if self.calibration_method is not None and self.calibration_method not in CALIBRATION_METHODS:
            raise UserInputError(f"unknown calibration method {self.calibration_method!r}: choose one of "
                                 f"{', '.join(CALIBRATION_METHODS)}")
        if self.recipe is not None:
            self._check_recipe()
            return
        if self.int8 and self.fp16:
            raise UserInputError(f"choose one of {o('int8')} and {o('fp16')}")
        if self.int8 and self.calibration is None:
            raise UserInputError(f"{o('int8')} needs {o('calibration')} DATA (a folder of images, an .npy/.npz file, "
                                 "or 'digits')")
        if self.fp16_io and not self.fp16:
            raise UserInputError(f"{o('fp16-io')} only applies with {o('fp16')}: add {o('fp16')} or drop {o('fp16-io')}")
        if self.bottleneck_layers and not self.bottleneck:
            raise UserInputError(f"{o('bottleneck-layers')} only applies with {o('bottleneck')}: add "
                                 f"{o('bottleneck')} SPEC or drop it")
        if self.calibration is not None and not (self.int8 or self.fp16 or self.bottleneck):
            raise UserInputError(f"{o('calibration')} is used only by {o('int8')}, {o('fp16')} (overflow check) and "
                                 f"{o('bottleneck')} (data-aware ranks): add one of them or drop {o('calibration')}")
        for name, value in (("calibration-method", self.calibration_method is not None),
                            ("int8-quantize-tail", self.int8_quantize_tail), ("int8-exclude", bool(self.int8_exclude)),
                            ("int8-bias-correction", self.int8_bias_correction),
                            ("int8-equalize", self.int8_equalize)):
            if value and not self.int8:
                raise UserInputError(f"{o(name)} only applies with {o('int8')}: add {o('int8')} or drop it")
        if self.max_accuracy_drop is not None and not (self.int8 or self.bottleneck):
            raise UserInputError(f"{o('max-accuracy-drop')} governs {o('int8')} and {o('bottleneck')}: add one of "
                                 "them or drop it")
        if self.metric is not None and self.budget is None:
            raise UserInputError(f"{o('metric')} is the measure of the accuracy budget: add {o('int8')} or "
                                 f"{o('bottleneck')} with {o('validate')} DATA (and {o('max-accuracy-drop')} POINTS), "
                                 f"or drop {o('metric')}")
        if self.judge_in is not None:
            from .validation import JUDGE_ENGINES

            if self.judge_in not in JUDGE_ENGINES:
                raise UserInputError(f"unknown {o('judge-in')} {self.judge_in!r}: choose {' or '.join(JUDGE_ENGINES)}")
            if self.budget is None:
                raise UserInputError(f"{o('judge-in')} says where the accuracy budget is judged: add {o('int8')} or "
                                     f"{o('bottleneck')} with {o('validate')} DATA, or drop {o('judge-in')}")
        if self.ort_layout and self.target != "ort":
            raise UserInputError(f"{o('ort-layout')} bakes ONNX Runtime's CPU layout: it needs {o('target')} ort")

    def _check_recipe(self) -> None:
        o = option
        if self.recipe not in RECIPES:
            raise UserInputError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        if self.calibration is None:
            raise UserInputError(f"{o('recipe')} fast quantizes to int8: give {o('calibration')} DATA (and "
                                 f"{o('validate')} DATA to judge the accuracy budget on data of your own)")
        if self.fp16 or self.fc_to_conv or self.ort_layout or self.int8:
            raise UserInputError(f"{o('recipe')} fast chooses its own passes: drop {o('fp16')}, {o('int8')}, "
                                 f"{o('fc-to-conv')} and {o('ort-layout')} (or run them without the recipe)")

    @property
    def budget(self) -> float | None:
        """Points of the task metric the approximating passes may cost: asked, or the default when real
        validation data is given to judge int8 or a bottleneck by."""
        if self.max_accuracy_drop is not None:
            return self.max_accuracy_drop
        if (self.int8 or self.bottleneck) and self.validate is not None:
            return DEFAULT_ACCURACY_DROP
        return None

    def accuracy_budget(self):
        """The deploykit.validation.AccuracyBudget int8 and the bottleneck share, or None without one."""
        if self.budget is None:
            return None
        from .validation import AccuracyBudget

        return AccuracyBudget(self.budget, asked=self.max_accuracy_drop is not None, metric=self.metric,
                              judged_in=self.judged_in)

    @property
    def judged_in(self) -> str:
        """Where the budget is judged: as asked, else in OpenVINO for a model meant for it (--target openvino)."""
        return self.judge_in or ("openvino" if self.target == "openvino" else "ort")
