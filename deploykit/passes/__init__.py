"""Graph passes: a registry of named, composable rewrites, and the preset pipelines.

Each pass is a GraphPass (an onnx_ir InPlacePass) usable on its own:

    import onnx_ir as ir
    from deploykit.passes import FoldBatchNormPass
    model = ir.load("model.onnx"); FoldBatchNormPass()(model); ir.save(model, "folded.onnx")

or composed and verified step by step with deploykit.optimize.run_pipeline / deploykit.optimize_model.
"""

from __future__ import annotations

from .base import GraphPass, NotedResult, PipelineContext
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
           "bottleneck": "--bottleneck SPEC", "fp16": "--fp16", "int8": "--int8 --calibration DATA [--int8-equalize] [--int8-bias-correction]",
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
           "build_pipeline", "PipelineContext", "NotedResult"]


def build_pipeline(options=None, **keywords) -> list[GraphPass]:
    """The passes optimize runs for these options (a deploykit.options.OptimizeOptions, or its fields as
    keywords): every registered pass the options turn on, in registry order, after `options.check()`.

    The order keeps them composable: exact structural passes first, approximating ones after, the ORT fusion
    last and only on an fp32 graph (the int8 quantizer fuses Conv+Relu itself, and ORT has no fp16 FusedConv
    on the CPU).
    """
    from ..options import OptimizeOptions

    options = OptimizeOptions.of(options, **keywords)
    options.check()
    budget = options.accuracy_budget()  # one budget for the whole pipeline, shared by the passes that spend it
    passes = [cls.from_options(options, budget=budget) for cls in REGISTRY.values()]
    return [p for p in passes if p is not None]
