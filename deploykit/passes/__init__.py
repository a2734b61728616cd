"""Graph passes: a registry of named, composable rewrites, and the preset pipelines.

Each pass is a GraphPass (an onnx_ir InPlacePass) usable on its own:

    import onnx_ir as ir
    from deploykit.passes import FoldBatchNormPass
    model = ir.load("model.onnx"); FoldBatchNormPass()(model); ir.save(model, "folded.onnx")

or composed and verified step by step with deploykit.optimize.run_pipeline / deploykit.optimize_model.
"""

from __future__ import annotations

from .base import GraphPass
from .bottleneck import BottleneckPass
from .cleanup import CleanupPass
from .fc_to_conv import FcToConvPass
from .fold_batchnorm import FoldBatchNormPass
from .fp16 import Float16Pass
from .fuse_activation import FuseConvActivationPass
from .int8 import QuantizeInt8Pass
from .ort_layout import OrtLayoutPass

# Every pass, by the name its report uses, in the order build_pipeline runs them, with the optimize option that
# turns it on: what `deploykit passes` lists and tests/passes/test_registry.py checks against the package.
REGISTRY: dict[str, type] = {
    "cleanup": CleanupPass,
    "fold": FoldBatchNormPass,
    "fc-to-conv": FcToConvPass,
    "bottleneck": BottleneckPass,
    "fp16": Float16Pass,
    "int8": QuantizeInt8Pass,
    "fuse": FuseConvActivationPass,
    "ort-layout": OrtLayoutPass,
}
OPTIONS = {"cleanup": "(always)", "fold": "--fold/--no-fold (on)", "fc-to-conv": "--fc-to-conv",
           "bottleneck": "--bottleneck SPEC", "fp16": "--fp16", "int8": "--int8 --calibration DATA",
           "fuse": "--fuse/--no-fuse (on)", "ort-layout": "--ort-layout"}


def describe_passes() -> list[dict]:
    """One row per registered pass: name, whether it is exact, the option that runs it, its summary."""
    import sys

    def summary(cls) -> str:
        text = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        return text.splitlines()[0] if text else ""

    return [{"name": name, "exact": bool(getattr(cls, "exact", True)), "option": OPTIONS[name], "summary": summary(cls)}
            for name, cls in REGISTRY.items()]

__all__ = ["GraphPass", "CleanupPass", "FoldBatchNormPass", "FuseConvActivationPass", "FcToConvPass", "BottleneckPass",
           "Float16Pass", "QuantizeInt8Pass", "OrtLayoutPass", "REGISTRY", "OPTIONS", "describe_passes",
           "build_pipeline"]


def build_pipeline(*, fold: bool = True, fuse: bool = True, target: str = "ort", fc_to_conv: bool = False,
                   bottleneck: str | None = None, bottleneck_layers: list[str] | None = None,
                   fp16: bool = False, fp16_io: bool = False, int8: bool = False, calibration=None,
                   calibration_method: str | None = None, ort_layout: bool = False, int8_exclude=(),
                   max_accuracy_drop: float | None = None, budget_asked: bool = True,
                   metric=None, int8_quantize_tail: bool = False) -> list[GraphPass]:
    """The passes `deploykit optimize` runs for these options, in the order that keeps them composable.

    Exact structural passes come first; approximating ones after; the ORT fusion last, and only on
    an fp32 graph (the int8 quantizer fuses Conv+Relu itself, and ORT has no fp16 FusedConv on the CPU).
    Options that would be silently ignored (or contradict each other) are refused.
    """
    from ..errors import UserInputError

    if target not in ("ort", "tensorrt", "openvino"):
        raise UserInputError(f"unknown target {target!r}: choose ort, tensorrt or openvino")
    if int8 and fp16:
        raise UserInputError("choose one of --int8 and --fp16")
    if int8 and calibration is None:
        raise UserInputError("--int8 needs --calibration DATA (a folder of images, an .npy/.npz file, or 'digits')")
    if fp16_io and not fp16:
        raise UserInputError("--fp16-io only applies with --fp16: add --fp16 or drop --fp16-io")
    if bottleneck_layers and not bottleneck:
        raise UserInputError("--bottleneck-layers only applies with --bottleneck: add --bottleneck SPEC or drop it")
    if calibration is not None and not (int8 or fp16 or bottleneck):
        raise UserInputError("--calibration is used only by --int8, --fp16 (overflow check) and --bottleneck "
                             "(data-aware ranks): add one of them or drop --calibration")
    if calibration_method is not None and not int8:
        raise UserInputError("--calibration-method only applies with --int8: add --int8 or drop it")
    if int8_quantize_tail and not int8:
        raise UserInputError("--int8-quantize-tail only applies with --int8: add --int8 or drop it")
    if int8_exclude and not int8:
        raise UserInputError("--int8-exclude only applies with --int8: add --int8 or drop it")
    if max_accuracy_drop is not None and not (int8 or bottleneck):
        raise UserInputError("--max-accuracy-drop governs --int8 and --bottleneck: add one of them or drop it")
    from ..validation import AccuracyBudget

    # One budget for the whole pipeline: the bottleneck may spend half of it when int8 follows, int8 what is left.
    if metric is not None and max_accuracy_drop is None:
        raise UserInputError("--metric is the measure of the accuracy budget: add --int8 or --bottleneck with "
                             "--validate DATA (and --max-accuracy-drop POINTS), or drop --metric")
    budget = (None if max_accuracy_drop is None else
              AccuracyBudget(max_accuracy_drop, asked=budget_asked, metric=metric))
    calibration_method = calibration_method or "minmax"
    passes: list[GraphPass] = [CleanupPass()]
    if fold:
        passes.append(FoldBatchNormPass())
    if fc_to_conv:
        from .fc_to_conv import FcToConvPass

        passes.append(FcToConvPass())
    if bottleneck:
        from .bottleneck import BottleneckPass

        passes.append(BottleneckPass.from_spec(bottleneck, layers=bottleneck_layers, calibration=calibration,
                                               budget=budget, budget_share=0.5 if int8 else 1.0))
    if int8:
        from .int8 import QuantizeInt8Pass

        # OpenVINO runs ONNX Runtime's QDQ layout (uint8 activations) as int8 as well (bench/ENGINES.md).
        passes.append(QuantizeInt8Pass(calibration, target="ort" if target == "openvino" else target,
                                       method=calibration_method, exclude=int8_exclude,
                                       budget=budget, keep_tail_float=not int8_quantize_tail))
    elif fp16:
        from .fp16 import Float16Pass

        passes.append(Float16Pass(keep_io_types=not fp16_io, sample=calibration))
    if fuse and not (int8 or fp16) and target != "openvino":
        # OpenVINO fuses Conv+activation itself and cannot read ONNX Runtime's com.microsoft.FusedConv.
        passes.append(FuseConvActivationPass(target))
    if ort_layout:
        if target != "ort":
            from ..errors import UserInputError

            raise UserInputError("--ort-layout bakes ONNX Runtime's CPU layout: it needs --target ort")
        from .ort_layout import OrtLayoutPass

        passes.append(OrtLayoutPass())
    return passes
