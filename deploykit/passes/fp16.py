"""float16 weights and compute, with float32 inputs and outputs by default.

What must stay in float32 is found on the model itself, not from a fixed list alone: the fp32
model runs on sample data (the calibration set if given, else random inputs at the recorded
shape) with every intermediate tensor exposed, and a node stays in float32 when
- any tensor it reads or writes reaches more than half the float16 range (65504) on that data
  (a value that large would become inf in a float16 cast, wherever the cast is placed), or
- it reads a constant with values beyond the float16 range, or
- it is an op whose float16 result is known to overflow or lose accuracy (Exp, Pow, sums of squares).

The conversion is done here rather than by a generic converter, because those clamp out-of-range
constants silently (onnxconverter-common truncates 1e6 to 1e4 by default, even for nodes it was told
to leave alone). Here a constant is converted only when every node reading it runs in float16 and
its values fit; Cast nodes go exactly on the edges where the precision changes.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .graph_tools import QUANTIZED_OPS, replace_value
from .base import GraphPass

FP16_MAX = 65504.0
RISKY_OPS = {"Exp", "Pow", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd"}
# Float inputs that are parameters of the op, not data, and must stay float32.
FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}
# Ops with no float16 form in the opsets deploykit writes (Range takes float/double/int only; quantization
# ops take float32 scales and data before opset 19): they keep float32, with Casts at their edges.
FLOAT32_ONLY_OPS = {"Range", "NonMaxSuppression"} | QUANTIZED_OPS
# Their outputs are shapes, not data: what is computed from them is a shape computation.
SHAPE_OPS = {"Shape", "Size"}
FLOAT = ir.DataType.FLOAT
HALF = ir.DataType.FLOAT16


class Float16Pass(GraphPass):
    name = "fp16"
    exact = False

    @classmethod
    def from_options(cls, options, budget=None):
        if not options.fp16:
            return None
        return cls(keep_io_types=not options.fp16_io, sample=options.calibration)

    def __init__(self, keep_io_types: bool = True, sample=None, input_shapes=None) -> None:
        super().__init__()
        self.keep_io_types, self.sample = keep_io_types, sample
        # {input name: shape} the guard samples at; else the pipeline's (PipelineContext), else the signature's.
        self.input_shapes = input_shapes
        self.blocked: dict[str, str] = {}

    def rewrite(self, model: ir.Model) -> bool:
        import onnx_ir.passes.common as common

        try:
            common.ShapeInferencePass()(model)  # every value needs its dtype to be converted right
        except Exception:
            pass
        graph = model.graph
        for i, node in enumerate(graph):
            node.name = node.name or f"{node.op_type}_{i}"
        self.blocked = self._find_blocked(model)
        half_nodes = [n for n in graph if n.name not in self.blocked and self._is_float_node(n)]
        half_ids = {id(n) for n in half_nodes}
        casts: dict[tuple[int, ir.DataType], ir.Value] = {}

        def cast(value: ir.Value, to: ir.DataType) -> ir.Value:
            key = (id(value), to)
            if key not in casts:
                node = ir.node("Cast", [value], {"to": to}, name=f"{value.name}_to_{to.name.lower()}")
                node.outputs[0].dtype = to
                node.outputs[0].shape = value.shape
                producer = value.producer()
                if producer is not None:
                    graph.insert_after(producer, node)
                else:
                    graph.insert_before(graph.node(0), node)
                casts[key] = node.outputs[0]
            return casts[key]

        # Constants first: converted in place when every reader is float16 and the values fit.
        converted_consts = 0
        for value in list(graph.initializers.values()):
            if value.dtype != FLOAT or value.const_value is None:
                continue
            readers = [u for u in value.uses()]
            if not readers or not all(id(u.node) in half_ids and (u.node.op_type, u.idx) not in FLOAT32_ONLY_INPUTS
                                      for u in readers):
                continue
            array = value.const_value.numpy()
            if array.size and float(np.max(np.abs(array))) > FP16_MAX:
                continue
            value.const_value = ir.tensor(array.astype(np.float16), name=value.name)
            value.dtype = HALF
            converted_consts += 1

        # Then every edge between the two precisions gets one shared Cast.
        for node in list(graph):  # a snapshot: the Casts inserted below are not revisited
            want = HALF if id(node) in half_ids else FLOAT
            for idx, value in enumerate(node.inputs):
                if value is None or value.dtype not in (FLOAT, HALF):
                    continue
                target = FLOAT if (node.op_type, idx) in FLOAT32_ONLY_INPUTS else want
                if value.dtype != target and not (value.const_value is not None and value.dtype == target):
                    node.replace_input_with(idx, cast(value, target))
            if id(node) in half_ids:
                for out in node.outputs:
                    if out is not None and out.dtype == FLOAT:
                        out.dtype = HALF

        for out in list(graph.outputs):
            if self.keep_io_types and out.dtype == HALF:
                _cast_graph_output(graph, out, FLOAT)
        if not self.keep_io_types:
            for inp in graph.inputs:
                if inp.dtype == FLOAT:
                    readers = [(u.node, u.idx) for u in inp.uses()]
                    inp.dtype = HALF
                    for reader, idx in readers:
                        if reader.op_type == "Cast" and reader.outputs[0].dtype == HALF:
                            replace_value(reader.outputs[0], inp)
                            graph.remove(reader, safe=True)
                        elif id(reader) not in half_ids:
                            reader.replace_input_with(idx, cast(inp, FLOAT))
            for out in list(graph.outputs):
                if out.dtype == FLOAT:
                    _cast_graph_output(graph, out, HALF)

        io_text = "float32 inputs/outputs" if self.keep_io_types else "float16 inputs/outputs"
        self.note(f"{len(half_nodes)} node(s) and {converted_consts} weight tensor(s) in float16, {io_text}")
        for name, why in self.blocked.items():
            self.note(f"kept {name} in float32: {why}")
        return True

    @staticmethod
    def _is_float_node(node: ir.Node) -> bool:
        if node.op_type in ("Cast", "Shape", "Constant") or node.domain not in ("", "ai.onnx", "com.microsoft"):
            return False
        return any(o is not None and o.dtype == FLOAT for o in node.outputs)

    def _find_blocked(self, model: ir.Model) -> dict[str, str]:
        blocked = {}
        for node in model.graph:
            subgraphs = [g for a in node.attributes.values() for g in
                         ([a.value] if a.type == ir.AttributeType.GRAPH else
                          list(a.value) if a.type == ir.AttributeType.GRAPHS else [])]
            if not subgraphs:
                continue
            # Control flow stays float32 whole, and so do the outer values its subgraphs read by name: the
            # subgraphs declare their types, and a Cast cannot be put on a captured value from outside.
            blocked[node.name] = f"{node.op_type} has subgraphs, which stay float32"
            for subgraph in subgraphs:
                for inner in ir.traversal.RecursiveGraphIterator(subgraph):
                    for v in inner.inputs:
                        producer = v.producer() if v is not None else None
                        if producer is not None and producer.graph is model.graph:
                            blocked.setdefault(producer.name, f"its output {v.name} is read inside {node.name}'s "
                                                              "subgraph, which stays float32")
        data_nodes = _data_dependent(model.graph)
        for node in model.graph:
            if node.op_type in FLOAT32_ONLY_OPS:
                blocked[node.name] = f"{node.op_type} has no float16 form here"
            elif self._is_float_node(node) and id(node) not in data_nodes:
                # Grid arithmetic from Shape, anchors from constants: exact in float32, not in float16 (past
                # 2048 integers are not), and cheap either way.
                blocked[node.name] = "it computes shapes or constants, not data"
            if node.name in blocked:
                continue
            if node.op_type in RISKY_OPS:
                blocked[node.name] = f"{node.op_type} overflows or loses accuracy in float16"
            for v in node.inputs:
                if v is not None and v.const_value is not None and v.dtype == FLOAT and v.const_value.size:
                    peak = float(np.max(np.abs(v.const_value.numpy())))
                    if peak > FP16_MAX:
                        blocked[node.name] = f"constant {v.name} holds {peak:.3g}, beyond float16's {FP16_MAX:g}"
        peaks = self._observed_peaks(model)
        for node in model.graph:
            if node.name in blocked:
                continue
            touched = [v for v in list(node.inputs) + list(node.outputs) if v is not None and v.name in peaks]
            loud = max(touched, key=lambda v: peaks[v.name], default=None)
            if loud is not None and peaks[loud.name] > FP16_MAX / 2:
                blocked[node.name] = (f"tensor {loud.name} reaches {peaks[loud.name]:.3g} on the sample data, "
                                      f"near float16's limit {FP16_MAX:g}")
        return blocked

    def _observed_peaks(self, model: ir.Model) -> dict[str, float]:
        """Max |value| of every float tensor on the sample data: the calibration set if given, else
        random samples at the model's input shapes. Every model gets the guard, with or without
        deploykit's metadata; the report says what it was measured on."""
        from ..calibration import layer_peaks
        from ..signature import read_signature
        from ..validation import load_validation

        proto = ir.to_proto(model)
        signature = read_signature(proto)
        shapes = self.input_shapes or self.context.input_shapes or signature.resolve(None)
        samples = load_validation(None, signature, shapes, calibration=self.sample)
        self.note(f"overflow guard measured on {samples.source}")
        names = [o.name for n in model.graph for o in n.outputs if o is not None and o.name and o.dtype in (None, FLOAT)]
        peaks = layer_peaks(model, names, samples.feeds)
        for name, array in samples.feeds.items():
            if array.dtype.kind == "f":
                peaks[name] = float(np.max(np.abs(array)))
        return peaks


def _data_dependent(graph: ir.Graph) -> set[int]:
    """ids of the nodes whose outputs depend on the values of a graph input (not only on its shape)."""
    data = {id(v) for v in graph.inputs}
    nodes = set()
    for node in graph:  # topological order
        if node.op_type in SHAPE_OPS:
            continue
        if any(v is not None and id(v) in data for v in node.inputs):
            nodes.add(id(node))
            data.update(id(o) for o in node.outputs if o is not None)
    return nodes


def _cast_graph_output(graph: ir.Graph, out: ir.Value, to: ir.DataType) -> None:
    """Put a Cast between a graph output and the outside; the output keeps its name and inner readers."""
    name = out.name
    cast = ir.node("Cast", [out], {"to": to}, name=f"{name}_to_{to.name.lower()}")
    cast.outputs[0].dtype = to
    cast.outputs[0].shape = out.shape
    graph.insert_after(out.producer(), cast)
    graph.outputs[graph.outputs.index(out)] = cast.outputs[0]
    out.name = f"{name}_{to.name.lower()}_source"
    cast.outputs[0].name = name
