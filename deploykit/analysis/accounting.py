"""Parameters, MACs and activation memory per layer, and the peak of live activations."""

from __future__ import annotations

import math

from ..errors import UserInputError
from .geometry import geometry_warnings
from .ops import CONV_OPS, INPLACE_OPS, MATMUL_OPS, VIEW_OPS
from .report import Layer, Report, Totals


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


def account(graph, model_name, input_shapes) -> Report:
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
        warnings += geometry_warnings(node, name)

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
