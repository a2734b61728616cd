"""Per-layer accounting of an ONNX model: shapes, parameters, MACs, activation memory, geometry lint.

Memory model (the cs231n notes' remark on inference): a training framework keeps every layer's
activation volume for the backward pass, so its activation memory is the *sum* over layers. An
inference runtime only needs a tensor until its last consumer has run, so what it needs is the
*peak* of the tensors live at once. Two kinds of node create no new volume in either count:
views (Flatten, Reshape, Squeeze, Unsqueeze, Identity) and element-wise activations that overwrite
an input nobody reads afterwards (ReLU in place, as VGG's `ReLU(inplace=True)` does). This is what
makes the totals line up with the cs231n VGG-16 table, which lists one volume per CONV+ReLU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

from .. import storage
from ..errors import UserInputError
from .accounting import account
from .graph_shapes import (accounted_values, constants_as_values, fix_input_shapes, is_static, observe_shapes,
                           resolve_input_shapes, standardize_contrib_ops, weightless_copy)
from .report import Layer, Report, Totals, format_report  # noqa: F401  (the public names of the analysis)


def inspect_model(model: str | Path | onnx.ModelProto, input_shape=None, *, weights: bool = True) -> Report:
    """Account for every node of the ONNX model at `model`.

    `input_shape` is a shape for a single-input model or {input name: shape}; inputs not given take
    the shape recorded by `deploykit export`, else the model's own static shape. With weights=False a
    model file whose weights sit in external data is read without them (sizes come from the dims),
    and is not re-validated: for deploykit's own staged candidates.
    """
    import onnx
    import onnx_ir as ir

    if isinstance(model, onnx.ModelProto):
        runnable = model  # with its weights, should shapes have to be observed by running it
        proto = weightless_copy(model)  # the shapes are rewritten below; the caller's model stays as it is
        model = proto.graph.name or "<in-memory model>"
    else:
        # Only dims are needed here: the weights are dropped as soon as the file is read, and the checker
        # reads the file itself, so a large model is never held twice (VGG-16: 2.9 GB -> under 1 GB).
        proto = weightless_copy(storage.load_model(model, load_weights=False))
        if weights:
            check_valid(str(model), model)
        runnable = model
    if any(n.domain == "com.microsoft.nchwc" for n in proto.graph.node):
        raise UserInputError(f"{model} carries ONNX Runtime's internal CPU layout (built with --ort-layout), which "
                             "ONNX shape inference cannot follow: inspect the model from before that step")
    shapes = resolve_input_shapes(proto, input_shape, str(model))
    fix_input_shapes(proto, shapes)
    original_ops = standardize_contrib_ops(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception:
        # Static inference gives up on some real graphs (run-time shape arithmetic, Paddle/TF
        # exports): keep what it can say and observe the rest by running the model below.
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    graph = ir.from_proto(inferred).graph
    for node in graph:
        if node.name in original_ops:
            node.op_type, node.domain = original_ops[node.name]
    constants_as_values(graph)
    unknown = [v for v in accounted_values(graph) if not is_static(v)]
    if unknown:
        observed = observe_shapes(runnable, shapes, [v.name for v in unknown], str(model))
        for v in unknown:
            shape, dtype = observed[v.name]
            v.shape = ir.Shape(shape)
            if v.dtype is None:
                v.dtype = dtype
    report = account(graph, str(model), shapes)
    report.warnings[:0] = opset_warnings(proto)
    return report


def opset_warnings(proto) -> list[str]:
    from ..verify import ort_max_opset

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = ort_max_opset()
    if opset is not None and newest and opset > newest:
        return [f"the model's opset {opset} is newer than this onnxruntime implements (up to {newest}): optimize, "
                "build, bench and Engine will refuse it; upgrade onnxruntime or convert the model to an older opset"]
    return []


def check_valid(proto, model) -> None:
    """Refuse a broken graph with onnx.checker's reason, but never a model ONNX Runtime itself can run.

    `proto` is the loaded model, or the file's path for a model whose weights are in external data."""
    import onnx

    try:
        onnx.checker.check_model(proto)
        return
    except onnx.checker.ValidationError as exc:
        reason = " ".join(str(exc).split())
    except Exception:  # e.g. over 2 GB in memory: leave the judgement to shape inference below
        return
    from ..verify import cpu_session

    try:
        small = not isinstance(proto, str) and proto.ByteSize() < 2**31 - 1
        cpu_session(proto if small else str(model), optimization="disable")
    except UserInputError:
        raise UserInputError(f"{model} is not a valid ONNX model: {reason[:240]}") from None


__all__ = ["inspect_model", "format_report", "Report", "Layer", "Totals", "weightless_copy"]
