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

import math

import numpy as np
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import io
from .errors import UserInputError
from .shapes import format_shape

VIEW_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
INPLACE_OPS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
               "Selu", "Softplus", "PRelu", "Neg", "Abs"}
CONV_OPS = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcConv"}
MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
_AXIS_NAMES = {1: ["length"], 2: ["height", "width"], 3: ["depth", "height", "width"]}


@dataclass
class Layer:
    name: str
    op: str
    output_shape: list[int]
    params: int
    macs: int
    activation_elements: int
    activation_bytes: int
    # True when the output reuses its input's memory (a view or an in-place activation).
    aliases_input: bool = False


@dataclass
class Totals:
    params: int
    param_bytes: int
    macs: int
    activation_elements: int
    activation_bytes: int
    peak_activation_bytes: int


@dataclass
class Report:
    model: str
    input_shapes: dict[str, list[int]]
    layers: list[Layer]
    totals: Totals
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shapes": self.input_shapes,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": asdict(self.totals),
            "warnings": self.warnings,
        }


def inspect_model(model, input_shape=None, *, weights: bool = True) -> Report:
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
        proto = _weightless_copy(model)  # the shapes are rewritten below; the caller's model stays as it is
        model = proto.graph.name or "<in-memory model>"
    else:
        # Only dims are needed here: the weights are dropped as soon as the file is read, and the checker
        # reads the file itself, so a large model is never held twice (VGG-16: 2.9 GB -> under 1 GB).
        proto = _weightless_copy(io.load_model(model, load_weights=False))
        if weights:
            _check_valid(str(model), model)
        runnable = model
    if any(n.domain == "com.microsoft.nchwc" for n in proto.graph.node):
        raise UserInputError(f"{model} carries ONNX Runtime's internal CPU layout (built with --ort-layout), which "
                             "ONNX shape inference cannot follow: inspect the model from before that step")
    shapes = _resolve_input_shapes(proto, input_shape, str(model))
    _fix_input_shapes(proto, shapes)
    original_ops = _standardize_contrib_ops(proto)
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
    _constants_as_values(graph)
    unknown = [v for v in _accounted_values(graph) if not _is_static(v)]
    if unknown:
        observed = _observe_shapes(runnable, shapes, [v.name for v in unknown], str(model))
        for v in unknown:
            shape, dtype = observed[v.name]
            v.shape = ir.Shape(shape)
            if v.dtype is None:
                v.dtype = dtype
    report = _account(graph, str(model), shapes)
    report.warnings[:0] = _opset_warnings(proto)
    return report


def _opset_warnings(proto) -> list[str]:
    from .verify import ort_max_opset

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = ort_max_opset()
    if opset is not None and newest and opset > newest:
        return [f"the model's opset {opset} is newer than this onnxruntime implements (up to {newest}): optimize, "
                "build, bench and Engine will refuse it; upgrade onnxruntime or convert the model to an older opset"]
    return []


def _check_valid(proto, model) -> None:
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
    from .verify import cpu_session

    try:
        small = not isinstance(proto, str) and proto.ByteSize() < 2**31 - 1
        cpu_session(proto if small else str(model), optimization="disable")
    except UserInputError:
        raise UserInputError(f"{model} is not a valid ONNX model: {reason[:240]}") from None


def _is_static(value) -> bool:
    return value.shape is not None and all(isinstance(d, int) for d in value.shape)


def _accounted_values(graph):
    """The values whose shapes the accounting reads: real inputs and every node output."""
    for v in graph.inputs:
        if not v.is_initializer():
            yield v
    for node in graph:
        if node.op_type == "Constant":
            continue
        for out in node.outputs:
            if out is not None and out.name:
                yield out


def _constants_as_values(graph) -> None:
    """A weight stored as a Constant node is a weight: give its value the tensor, as an initializer has."""
    import onnx_ir as ir

    for node in graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes:
            tensor = node.attributes["value"].value
            out = node.outputs[0]
            out.const_value = tensor
            out.shape = ir.Shape(list(tensor.shape))
            out.dtype = tensor.dtype


def _observe_shapes(model, shapes, names, label) -> dict:
    """Shapes (and types) of `names`, observed by running the model once on sample inputs at `shapes`.

    ONNX Runtime runs the graph it is given with optimisations off, so every intermediate tensor
    exists and is returned as an extra output. The caller's ModelProto is restored afterwards.
    """
    import onnx

    from .signature import read_signature, sample_inputs
    from .verify import cpu_session

    proto = model if isinstance(model, onnx.ModelProto) else io.load_model(model)
    existing = {o.name for o in proto.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in existing]
    added = len(extra)
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    try:
        session = cpu_session(proto, optimization="disable", label=label)
        feeds = sample_inputs(read_signature(proto), shapes)
        wanted = list(dict.fromkeys(names))
        values = session.run(wanted, feeds)
    except UserInputError:
        raise
    except Exception as exc:
        from .verify import runtime_message

        raise UserInputError(f"{label} does not run at input {shapes} ({runtime_message(exc)}): check --input-shape") \
            from exc
    finally:
        if added:
            del proto.graph.output[len(proto.graph.output) - added:]
    import onnx_ir as ir

    return {n: (list(v.shape), ir.DataType.from_numpy(np.asarray(v).dtype)) for n, v in zip(wanted, values)}


def _standardize_contrib_ops(proto) -> dict[str, tuple[str, str]]:
    """ONNX shape inference knows no com.microsoft ops: present FusedConv to it as the Conv it is."""
    renamed = {}
    for i, node in enumerate(proto.graph.node):
        if node.domain == "com.microsoft" and node.op_type == "FusedConv":
            if not node.name:
                node.name = f"FusedConv_{i}"
            renamed[node.name] = (node.op_type, node.domain)
            node.op_type, node.domain = "Conv", ""
            keep = [a for a in node.attribute if a.name not in ("activation", "activation_params")]
            del node.attribute[:]
            node.attribute.extend(keep)
    return renamed


def _weightless_copy(proto):
    """A copy for shape and size accounting: large initializers keep their dims and type, not their data.

    Shape inference and the figures here need only dims (and the values of small shape tensors), so
    a 500 MB model costs kilobytes to inspect.
    """
    import onnx

    light = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name,
                            producer_version=proto.producer_version)
    light.opset_import.extend(proto.opset_import)
    light.metadata_props.extend(proto.metadata_props)
    light.functions.extend(proto.functions)
    g = proto.graph
    light.graph.name = g.name
    for name in ("node", "input", "output", "value_info"):
        getattr(light.graph, name).extend(getattr(g, name))
    for tensor in proto.graph.initializer:
        out = light.graph.initializer.add()
        if tensor.data_location == onnx.TensorProto.EXTERNAL or math.prod(tensor.dims) > 4096:
            out.name, out.data_type = tensor.name, tensor.data_type
            out.dims.extend(tensor.dims)
        else:
            out.CopyFrom(tensor)
    return light


def _resolve_input_shapes(proto, given, model_name) -> dict[str, list[int]]:
    from .signature import read_signature

    return {name: list(shape) for name, shape in read_signature(proto).resolve(given).items()}


def _fix_input_shapes(proto, shapes):
    for inp in proto.graph.input:
        if inp.name in shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                d.Clear()
                d.dim_value = v
    # Shapes the exporter recorded are symbolic; let inference recompute them for this input.
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape)


def _concrete(value) -> list[int]:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        raise UserInputError(f"could not infer a static shape for tensor {value.name!r}: check --input-shape")
    return [int(d) for d in value.shape]


def _bytes(value, elements) -> int:
    return int(elements * value.dtype.itemsize) if value.dtype is not None else elements * 4


def _is_param(value) -> bool:
    # Shape and index tensors (int64/int32) are not learned parameters.
    import onnx_ir as ir

    tensor = value.const_value
    return tensor is not None and tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32)


def _macs(node) -> int:
    op = node.op_type
    if op in CONV_OPS:
        weight = node.inputs[3 if op == "QLinearConv" else 1]
        return _numel(_concrete(node.outputs[0])) * _numel(_concrete(weight)[1:])
    if op == "ConvTranspose":
        weight = node.inputs[1]
        return _numel(_concrete(node.inputs[0])) * _numel(_concrete(weight)[1:])
    if op == "Gemm":
        a = _concrete(node.inputs[0])
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.value else a[1]
        return _numel(_concrete(node.outputs[0])) * k
    if op in MATMUL_OPS:
        a = _concrete(node.inputs[0])
        return _numel(_concrete(node.outputs[0])) * a[-1]
    return 0


def _account(graph, model_name, input_shapes) -> Report:
    graph_inputs = [v for v in graph.inputs if not v.is_initializer()]
    # The caller owns graph inputs and outputs: nothing may overwrite them in place. Outputs also
    # live to the end; inputs are freed after their last reader like any other tensor.
    no_overwrite = {id(v) for v in graph_inputs} | {id(v) for v in graph.outputs}
    pinned = {id(v) for v in graph.outputs}

    # Buffer simulation for peak live memory: a buffer lives until every tensor sharing it has been
    # read by all of its consumers (graph outputs live to the end).
    buffer_of: dict[int, int] = {}
    buffer_bytes: dict[int, int] = {}
    remaining: dict[int, int] = {}
    live = 0

    def allocate(value, nbytes):
        nonlocal live
        bid = id(value)
        buffer_of[id(value)] = bid
        buffer_bytes[bid] = nbytes
        remaining[bid] = len(value.uses()) + (1 if id(value) in pinned else 0)
        live += nbytes

    def release(bid):
        nonlocal live
        remaining[bid] -= 1
        if remaining[bid] == 0:
            live -= buffer_bytes.pop(bid)

    activation_elements = activation_bytes = 0
    for v in graph_inputs:
        n = _numel(_concrete(v))
        activation_elements += n
        activation_bytes += _bytes(v, n)
        allocate(v, _bytes(v, n))
    peak = live

    # Values computed only from constants (QDQ's DequantizeLinear on weights, shape arithmetic) are
    # constants too: a runtime folds or fuses them, so they hold no activation memory.
    constant_values: set[int] = set()
    layers, seen_params = [], set()
    param_total = param_bytes_total = mac_total = 0
    warnings = []
    for index, node in enumerate(graph):
        if node.op_type == "Constant" and node.outputs[0].const_value is not None:
            continue  # a weight or shape constant: counted where it is read
        name = node.name or f"{node.op_type}_{index}"
        params = 0
        for v in node.inputs:
            if v is not None and _is_param(v):
                if id(v) not in seen_params:  # a weight shared by two nodes counts once
                    seen_params.add(id(v))
                    param_total += v.const_value.size
                    param_bytes_total += int(v.const_value.nbytes)
                params += v.const_value.size
        macs = _macs(node)
        mac_total += macs
        warnings += _geometry_warnings(node, name)

        if node.inputs and all(v is None or v.const_value is not None or id(v) in constant_values for v in node.inputs):
            for out in node.outputs:
                if out is not None:
                    constant_values.add(id(out))
            first_out = node.outputs[0]
            n = _numel(_concrete(first_out)) if first_out.shape is not None else 0
            layers.append(Layer(name, node.op_type, _concrete(first_out) if first_out.shape is not None else [],
                                params, macs, n, _bytes(first_out, n), True))
            continue
        first_in = node.inputs[0] if node.inputs else None
        in_buf = buffer_of.get(id(first_in)) if first_in is not None else None
        aliases = in_buf is not None and (
            node.op_type in VIEW_OPS
            or (node.op_type in INPLACE_OPS and remaining[in_buf] == 1 and id(first_in) not in no_overwrite)
        )
        out_elems = out_bytes = 0
        for out in node.outputs:
            if out is None or not out.name:
                continue
            n = _numel(_concrete(out))
            out_elems += n
            out_bytes += _bytes(out, n)
        if aliases:
            out = node.outputs[0]
            buffer_of[id(out)] = in_buf
            remaining[in_buf] += len(out.uses()) + (1 if id(out) in pinned else 0)
        else:
            for out in node.outputs:
                if out is not None and out.name:
                    allocate(out, _bytes(out, _numel(_concrete(out))))
            activation_elements += out_elems
            activation_bytes += out_bytes
        peak = max(peak, live)
        for v in node.inputs:
            if v is not None and id(v) in buffer_of and id(v) not in constant_values:
                release(buffer_of[id(v)])
        for out in node.outputs:  # outputs nobody reads are freed at once
            bid = buffer_of.get(id(out)) if out is not None else None
            if bid in buffer_bytes and remaining[bid] == 0:
                live -= buffer_bytes.pop(bid)

        first_out = node.outputs[0]
        layers.append(Layer(name, node.op_type, _concrete(first_out) if first_out.shape is not None else [],
                            params, macs, out_elems, out_bytes, bool(aliases)))

    totals = Totals(param_total, param_bytes_total, mac_total, activation_elements, activation_bytes, peak)
    return Report(model_name, input_shapes, layers, totals, warnings)


def _geometry_warnings(node, name) -> list[str]:
    """The notes' constraint: (W - F + 2P)/S + 1 must be an integer, or rows/columns are dropped."""
    op = node.op_type
    if op not in CONV_OPS | POOL_OPS:
        return []
    attrs = node.attributes
    auto_pad = attrs.get("auto_pad")
    if auto_pad is not None and auto_pad.value not in ("NOTSET", b"NOTSET"):
        return []
    ceil_mode = attrs.get("ceil_mode")
    if ceil_mode is not None and ceil_mode.value:
        return []  # ceil mode pads the last window instead of dropping input
    x = node.inputs[0]
    if x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return []
    spatial = [int(d) for d in x.shape[2:]]
    rank = len(spatial)
    if "kernel_shape" in attrs:
        kernel = list(attrs["kernel_shape"].value)
    elif op in CONV_OPS and node.inputs[1] is not None and node.inputs[1].shape is not None:
        kernel = [int(d) for d in node.inputs[1].shape[2:]]
    else:
        return []
    strides = list(attrs["strides"].value) if "strides" in attrs else [1] * rank
    dilations = list(attrs["dilations"].value) if "dilations" in attrs else [1] * rank
    pads = list(attrs["pads"].value) if "pads" in attrs else [0] * (2 * rank)
    problems = []
    for axis in range(rank):
        w, f, s = spatial[axis], (kernel[axis] - 1) * dilations[axis] + 1, strides[axis]
        p_begin, p_end = pads[axis], pads[axis + rank]
        span = w - f + p_begin + p_end
        if span >= 0 and span % s:
            pad_text = f"2·{p_begin}" if p_begin == p_end else f"({p_begin}+{p_end})"
            # The positions past the last window come off the end of the padded input: the
            # trailing padding first, then real input.
            lost = max(0, span % s - p_end)
            problems.append((axis, f"({w} − {f} + {pad_text})/{s} + 1 = {span / s + 1:g}", lost))
    if not problems:
        return []
    names = _AXIS_NAMES.get(rank, [f"axis {i}" for i in range(rank)])
    same = len(problems) == rank and len({(text, lost) for _, text, lost in problems}) == 1
    groups = [([names[a] for a, _, _ in problems], problems[0][1], problems[0][2])] if same else \
        [([names[a]], text, lost) for a, text, lost in problems]
    out = []
    for axes, text, lost in groups:
        unit = "rows/columns" if len(axes) > 1 else {"height": "rows", "width": "columns"}.get(axes[0], "elements")
        effect = (f"the last {lost} input {unit} are never seen" if lost else
                  "only trailing zero padding is skipped, no input is lost")
        out.append(f"{name} ({op}) does not tile its input {' and '.join(axes)}: "
                   f"(W − F + 2P)/S + 1 = {text}, not an integer; {effect}")
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_report(report: Report) -> str:
    """The table `deploykit inspect` prints."""
    headers = ["name", "op", "output shape", "params", "MACs", "act. elems", "act. bytes"]
    rows = []
    for layer in report.layers:
        rows.append([
            layer.name, layer.op, format_shape(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}",
            f"{layer.activation_elements:,}" + ("*" if layer.aliases_input else ""),
            _human_bytes(layer.activation_bytes),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    t = report.totals
    inputs = ", ".join(f"{k} {format_shape(v)}" for k, v in report.input_shapes.items())
    out = [f"model: {report.model}  (input {inputs})", line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [
        "",
        f"parameters:            {t.params:,} ({_human_bytes(t.param_bytes)})",
        f"MACs:                  {t.macs:,} ({_human_count(t.macs)})",
        f"activations, all kept: {t.activation_elements:,} elements ({_human_bytes(t.activation_bytes)}), input included"
        " — what training keeps",
        f"peak live activations: {_human_bytes(t.peak_activation_bytes)} — what inference needs when each tensor is "
        "freed after its last use",
    ]
    if any(layer.aliases_input for layer in report.layers):
        out.append("* reuses its input's memory (a view or an in-place activation): not counted again in the totals")
    for w in report.warnings:
        out.append(f"warning: {w}")
    return "\n".join(out)
