"""ONNX Runtime sessions for deploykit's own checks, and ORT's errors as one line. A leaf below every layer."""

from __future__ import annotations

import os
import re

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def new_session(model, *, optimization: str = "all", threads: int | None = None, lean: bool = False,
                save_optimized_to=None, label=None):
    """The one way deploykit opens an ONNX Runtime CPU session for its own work (checks, timings, reading
    what ORT makes of a graph): a model path or an in-memory ModelProto, quiet, at an optimisation level
    (`OPT_LEVELS`), with `threads` intra-op threads; `lean` without weight prepacking or arena;
    `save_optimized_to` writes the graph ORT runs. ORT's refusal is one line naming `label` (or the model).
    A user's sessions go through deploykit.Engine, which takes the user's session settings."""
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[optimization])
    if threads:
        opts.intra_op_num_threads = int(threads)
    if lean:
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if save_optimized_to is not None:
        opts.optimized_model_filepath = str(save_optimized_to)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        name = label or (model if isinstance(model, (str, os.PathLike)) else (model.graph.name or "the model"))
        raise runtime_refusal(name, exc) from exc


def cpu_session(model, optimization: str = "all", label=None):
    """A lean session for verification: it runs a few batches and is dropped, so prepacked weight copies and the
    arena would double a large model's footprint for no gain (VGG-16's optimize peaked at 5.4x its size)."""
    return new_session(model, optimization=optimization, lean=True, label=label)


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_LOAD = re.compile(r"^Load model from .*? failed:\s*")
# "/onnxruntime_src/.../file.h:46 void ns::Function(const T&, ...) Message": the C++ location is noise to a user.
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+\s+.*?\)\s+(?=[A-Z])")
_ORT_OPSET = re.compile(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)")


def runtime_message(exc: BaseException, limit: int = 240) -> str:
    """ONNX Runtime's error as one short line: no error-code prefix or C++ location, cut at `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _ORT_LOAD.sub("", _ORT_PREFIX.sub("", text))
    text = _ORT_SOURCE.sub("", text)
    opset = _ORT_OPSET.search(text)
    if opset:
        text = (f"the model's opset {opset.group(1)} is newer than this onnxruntime implements "
                f"(domain {opset.group(2).rstrip('.')} up to opset {opset.group(3)})")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def runtime_refusal(model, exc: BaseException):
    """The UserInputError for a model ONNX Runtime will not load (an opset it lacks, a missing initializer...)."""
    from .errors import UserInputError

    message = runtime_message(exc)
    if "newer than this onnxruntime" in message:
        hint = "upgrade onnxruntime, or convert the model to an older opset (onnx.version_converter)"
    else:
        hint = "the model is invalid or uses an operator this onnxruntime lacks; check it with onnx.checker"
    return UserInputError(f"ONNX Runtime cannot load {model}: {message}; {hint}")


_MAX_OPSET: int | None = None


def ort_max_opset() -> int:
    """The newest ai.onnx opset this onnxruntime loads, probed once with a one-node model."""
    global _MAX_OPSET
    if _MAX_OPSET is None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        for version in range(onnx.defs.onnx_opset_version() + 2, 6, -1):
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
            graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
            probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)], ir_version=8)
            try:
                ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            except Exception:
                continue
            _MAX_OPSET = version
            break
        else:
            _MAX_OPSET = 0
    return _MAX_OPSET
