"""nn.Module / file.py:factory / zoo name / archive -> ONNX, with a numerical proof of the export.

Exporter choice (measured, see ../shared/docs/performance-facts.md and bench/): the legacy
TorchScript exporter runs 5-7x faster than the dynamo exporter and, with constant folding in eval
mode, emits the same clean graph (BatchNorm folded into Conv, no run-time weight arithmetic), which
ONNX Runtime runs exactly as fast. The dynamo exporter stays available with exporter="dynamo"; it is
always run with its optimiser on, since without it each conv's bias is computed at run time.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path


from . import storage
from ._version import __version__
from .errors import DeploykitError, UserInputError, VerificationError
from .shapes import format_shape
from .signature import RECORDED_KEY, format_recorded
from .verify import Deviation, compare, run_onnx_cpu, worst
from .zoo import load_zoo_model, require_torch

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ParityCheck:
    input_shapes: dict[str, tuple[int, ...]]
    deviations: list[Deviation]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return next(iter(self.input_shapes.values()))

    def describe_shape(self) -> str:
        if len(self.input_shapes) == 1:
            return format_shape(self.input_shape)
        return ", ".join(f"{n} {format_shape(s)}" for n, s in self.input_shapes.items())

    @property
    def max_abs(self) -> float:
        return max(d.max_abs for d in self.deviations)

    @property
    def max_rel(self) -> float:
        return max(d.max_rel for d in self.deviations)


@dataclass
class ExportResult:
    path: Path
    source: str
    input_shapes: dict[str, tuple[int, ...]]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int
    exporter: str
    seconds: float
    checks: list[ParityCheck] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return list(self.input_shapes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first (for most CNNs, the only) input's shape."""
        return next(iter(self.input_shapes.values()))

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.checks)

    @property
    def max_rel(self) -> float:
        return max(c.max_rel for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "source": self.source, "input_shape": list(self.input_shape),
            "input_shapes": {n: list(v) for n, v in self.input_shapes.items()},
            "dynamic_axes": self.dynamic_axes, "opset": self.opset, "exporter": self.exporter,
            "seconds": self.seconds, "max_abs_error": self.max_abs, "max_rel_error": self.max_rel,
            "checks": [{"input_shapes": {n: list(v) for n, v in c.input_shapes.items()}, "max_abs": c.max_abs,
                        "max_rel": c.max_rel}
                       for c in self.checks],
        }


def export(model: str | object, output: str | Path, *, weights: str | None = None,
           input_shape=None, dynamic_batch: bool = True,
           dynamic_spatial: bool = False, opset: int = DEFAULT_OPSET,
           tolerance: float = DEFAULT_TOLERANCE, exporter: str = "torchscript",
           seed: int = 0) -> ExportResult:
    """Export `model` (a MODEL string or an nn.Module) to ONNX at `output` and prove the export.

    `input_shape` is one shape, or {name: shape} for a module whose forward() takes several
    inputs (named after forward's parameters). The ONNX model is run in ONNX Runtime against the
    module in PyTorch on the same random inputs (and on a second batch size when the batch is
    dynamic). If the max relative error exceeds `tolerance`, VerificationError is raised and
    nothing is written. No file the model was read from is ever written over.
    """
    import onnx

    torch = require_torch()
    if exporter not in EXPORTERS:
        raise UserInputError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    sources = [] if not isinstance(model, str) else [model.rpartition(":")[0] if ".py:" in model else model]
    sources += [weights] if weights else []
    out = storage.check_output_path(output, [s for s in sources if s and Path(s).exists()])
    if isinstance(model, torch.nn.Module):
        from .zoo import _eval

        module, source, default_shape = _eval(model), type(model).__name__, None
    else:
        loaded = load_zoo_model(str(model), weights)
        module, source, default_shape = loaded.module, loaded.source, loaded.input_shape
    is_pt2 = str(source).endswith(".pt2")
    if is_pt2 and exporter == "torchscript":
        exporter = "dynamo"  # the TorchScript tracer cannot run a torch.export module
    names = _input_names(module)
    shapes = _export_shapes(names, input_shape, default_shape, source)
    for name, shape in shapes.items():
        if len(shape) < 3 and dynamic_spatial:
            raise UserInputError(f"--dynamic-spatial needs image inputs (N,C,H,W); input {name!r} has shape "
                                 f"{format_shape(shape)}")

    from .memory import check_allocation

    for name, shape in shapes.items():  # the example, a second one for the dynamic-batch check, the outputs
        check_allocation(shape, "float32", f"the example input {name!r}", "give a smaller --input-shape", copies=4)
    gen = torch.Generator().manual_seed(seed)
    examples = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    reference = _forward(module, examples, source)
    output_names = ["output"] + [f"output_{i}" for i in range(1, len(reference))]
    dynamic_axes: dict[str, dict[int, str]] = {}
    if dynamic_batch or dynamic_spatial:
        for name, shape in shapes.items():
            in_axes = {0: "batch"} if dynamic_batch else {}
            if dynamic_spatial:
                in_axes.update({len(shape) - 2: "height", len(shape) - 1: "width"})
            dynamic_axes[name] = in_axes
        rank = len(next(iter(shapes.values())))
        for name, ref in zip(output_names, reference):
            axes = {0: "batch"} if dynamic_batch and ref.ndim > 0 else {}
            if dynamic_spatial and ref.ndim == rank:
                axes.update({ref.ndim - 2: "out_height", ref.ndim - 1: "out_width"})
            if axes:
                dynamic_axes[name] = axes

    start = time.perf_counter()
    with storage.atomic_path(out) as tmp:
        _run_exporter(torch, module, examples, tmp, output_names, dynamic_axes, opset, exporter)
        seconds = time.perf_counter() - start
        proto = storage.load_model(tmp)  # loaded once: tidied and saved here, stamped with provenance below
        written_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        if _inline_initializer_identities(proto):
            onnx.save_model(proto, str(tmp))
        _check_structure(tmp)
        checks = [ParityCheck(shapes, _parity(tmp, module, examples, reference, output_names))]
        if dynamic_batch:
            other = {n: (s[0] + 2,) + tuple(s[1:]) for n, s in shapes.items()}
            x2 = {n: torch.randn(s, generator=gen) for n, s in other.items()}
            checks.append(ParityCheck(other, _parity(tmp, module, x2, _forward(module, x2, source, is_pt2),
                                                            output_names)))
        result = ExportResult(out, source, shapes, dynamic_axes, written_opset, exporter, seconds, checks)
        if result.max_rel > tolerance:
            bad = next(c for c in checks if c.max_rel > tolerance)
            raise VerificationError(
                f"export of {source} does not match PyTorch at input {bad.describe_shape()}: "
                f"{worst(bad.deviations).describe()} exceeds tolerance {tolerance:g}; nothing was written"
            )
        first = next(iter(shapes.values()))
        storage.set_metadata(proto, {
            "source": source, "input_shape": ",".join(map(str, first)),
            RECORDED_KEY: format_recorded(shapes), "version": __version__,
            "exporter": exporter, "parity_max_abs": f"{result.max_abs:.3e}",
            "parity_max_rel": f"{result.max_rel:.3e}",
        })
        proto.producer_name = "deploykit"
        proto.producer_version = __version__
        onnx.save_model(proto, str(tmp))
    return result


def _input_names(module) -> list[str]:
    """ONNX input names: "input" for the usual single-image CNN, else forward()'s parameter names."""
    import inspect as pyinspect

    try:
        params = [p for p in pyinspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return ["input"]
    return ["input"] if len(params) <= 1 else [p.name for p in params]


def _export_shapes(names, given, default_shape, source) -> dict[str, tuple[int, ...]]:
    from .signature import normalize_shapes

    if given and not isinstance(given, dict):
        given = {None: tuple(given)}
    if given:
        if len(names) == 1 and set(given) == {names[0]}:
            given = {None: given[names[0]]}
        shapes = normalize_shapes(given, names)
    elif default_shape is not None and len(names) == 1:
        shapes = {names[0]: tuple(default_shape)}
    else:
        shapes = {}
    missing = [n for n in names if n not in shapes]
    if missing:
        example = "--input-shape 1,3,224,224" if len(names) == 1 else \
            " ".join(f"--input-shape {n}:1,3,224,224" for n in missing)
        raise UserInputError(f"{source} records no input shape for {', '.join(missing)}: give one, e.g. {example}")
    return {n: tuple(shapes[n]) for n in names}


def _forward(module, examples: dict, source, pt2_dynamic: bool = False):
    torch = require_torch()
    try:
        with torch.inference_mode():
            y = module(*examples.values())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        given = ", ".join(f"{n} {format_shape(t.shape)}" if len(examples) > 1 else format_shape(t.shape)
                          for n, t in examples.items())
        if pt2_dynamic and ("guard" in first.lower() or "expected input" in first.lower()):
            raise UserInputError(f"{source} was exported with a fixed batch size and refuses input {given} "
                                 f"({first}): export it with --static-batch") from exc
        raise UserInputError(
            f"{source} does not accept input of shape {given} ({first}): give the right --input-shape"
        ) from exc
    outs = list(y) if isinstance(y, (tuple, list)) else [y]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise UserInputError(f"{source} must return a tensor or a tuple of tensors to be exported")
    return [o.detach().numpy() for o in outs]


def _run_exporter(torch, module, examples, path, output_names, dynamic_axes, opset, exporter):
    names = list(examples)
    args = tuple(examples.values())
    try:
        with warnings.catch_warnings():
            # The legacy path warns that it is deprecated on every call; the choice is deliberate.
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                                  input_names=names, output_names=output_names,
                                  dynamic_axes=dynamic_axes or None, do_constant_folding=True)
            else:
                dyn = None
                if any(dynamic_axes.get(n) for n in names):
                    dyn = tuple({i: torch.export.Dim.DYNAMIC for i in dynamic_axes.get(n, {})} for n in names)
                # The dynamo exporter implements opset 18+; asking for less runs a version
                # converter that fails on Reduce* axes and floods stderr, leaving 18 anyway.
                logging.getLogger("torch.onnx").setLevel(logging.ERROR)
                program = torch.onnx.export(module, args, dynamo=True, opset_version=max(opset, 18),
                                            input_names=names, output_names=output_names,
                                            dynamic_shapes=dyn, optimize=True, verbose=False)
                program.save(str(path))
    except DeploykitError:
        raise
    except OSError as exc:
        from .storage import storage_error

        if storage_error(exc) is not None:
            raise storage_error(exc) from exc  # a full disk is not the exporter's fault: another one cannot help
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeploykitError(f"the {exporter} exporter failed: {first} (try --exporter "
                             f"{'dynamo' if exporter == 'torchscript' else 'torchscript'}, or --debug for details)") from exc


def _inline_initializer_identities(proto) -> bool:
    """Point consumers straight at initializers the exporter routed through Identity nodes.

    The TorchScript exporter deduplicates equal weights (e.g. the zero biases left by folding
    freshly initialised BatchNorms) and re-creates each copy as Identity(initializer): weight
    plumbing that would otherwise run on every inference.
    """
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    alias = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if not alias:
        return False
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    return True


def _check_structure(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise VerificationError(f"exported model fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def _parity(path, module, examples, reference, output_names) -> list[Deviation]:
    got = run_onnx_cpu(str(path), {n: t.numpy() for n, t in examples.items()})
    return compare(output_names, reference, got)

