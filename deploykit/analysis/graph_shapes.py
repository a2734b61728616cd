"""Shapes for the accounting: constants as values, shapes observed in ONNX Runtime where inference leaves them open, weightless copies."""

from __future__ import annotations

import math

import numpy as np

from .. import storage
from ..errors import UserInputError


def is_static(value) -> bool:
    return value.shape is not None and all(isinstance(d, int) for d in value.shape)


def accounted_values(graph):
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


def constants_as_values(graph) -> None:
    """A weight stored as a Constant node is a weight: give its value the tensor, as an initializer has."""
    import onnx_ir as ir

    for node in graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes:
            tensor = node.attributes["value"].value
            out = node.outputs[0]
            out.const_value = tensor
            out.shape = ir.Shape(list(tensor.shape))
            out.dtype = tensor.dtype


def observe_shapes(model, shapes, names, label) -> dict:
    """Shapes (and types) of `names`, observed by running the model once on sample inputs at `shapes`.

    ONNX Runtime runs the graph it is given with optimisations off, so every intermediate tensor
    exists and is returned as an extra output. The caller's ModelProto is restored afterwards.
    """
    import onnx

    from ..signature import read_signature, sample_inputs
    from ..verify import cpu_session

    proto = model if isinstance(model, onnx.ModelProto) else storage.load_model(model)
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
        from ..verify import runtime_message

        raise UserInputError(f"{label} does not run at input {shapes} ({runtime_message(exc)}): check --input-shape") \
            from exc
    finally:
        if added:
            del proto.graph.output[len(proto.graph.output) - added:]
    import onnx_ir as ir

    return {n: (list(v.shape), ir.DataType.from_numpy(np.asarray(v).dtype)) for n, v in zip(wanted, values)}


def standardize_contrib_ops(proto) -> dict[str, tuple[str, str]]:
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


def weightless_copy(proto):
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


def resolve_input_shapes(proto, given, model_name) -> dict[str, list[int]]:
    from ..signature import read_signature

    return {name: list(shape) for name, shape in read_signature(proto).resolve(given).items()}


def fix_input_shapes(proto, shapes):
    for inp in proto.graph.input:
        if inp.name in shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                d.Clear()
                d.dim_value = v
    # Shapes the exporter recorded are symbolic; let inference recompute them for this input.
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
