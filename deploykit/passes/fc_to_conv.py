"""Cast fully-connected layers into convolutions, so a classifier slides over larger images.

(cs231n, "Converting FC layers to CONV layers".) An FC layer reading a flattened CxHxW volume is a
convolution with an HxW kernel and no padding: its weight (O, C*H*W) is reshaped to (O, C, H, W) —
Flatten lays the volume out channel-major, exactly the order a Conv kernel reads. Every following
FC layer becomes a 1x1 convolution. At the training input size the result equals the original
(as an (N, O, 1, 1) map); on a larger image it is an (N, O, h, w) map of scores, one per crop
position at the network's total stride. A global-average-pool head is turned into a fixed-window
average pool of the training-time feature size, so each cell still averages exactly one crop's
features.

The conversion is refused (UserInputError) when it would not be exact: when something between
the input and the head is not a sliding-window operation (a Reshape, a global pool, a resize),
or when the FC layer does not read a whole flattened volume. When the convolutions zero-pad their
input, each cell differs from evaluating its crop alone, since the crop sees zeros where the full
image has pixels: the pass says so, and `deploykit slide --check` measures by how much.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import UserInputError
from .graph_tools import add_initializer, attr, const, ints, replace_value, sole_consumer
from .base import GraphPass

# Operations that commute with translation: each output pixel depends on a fixed window of input.
SLIDING_OPS = {"Conv", "FusedConv", "MaxPool", "AveragePool", "LpPool", "BatchNormalization", "Relu",
               "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "PRelu",
               "Softplus", "Add", "Sub", "Mul", "Div", "Concat", "LRN", "Identity", "Dropout", "Neg", "Abs"}
ELEMENTWISE_HEAD_OPS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "Elu", "Selu",
                        "Softplus", "Identity", "Dropout", "Neg", "Abs"}
META_STRIDE = "deploykit.fc_to_conv.stride"
META_WINDOW = "deploykit.fc_to_conv.window"
META_PADDED = "deploykit.fc_to_conv.padded"


class FcToConvPass(GraphPass):
    name = "fc-to-conv"
    exact = True

    @classmethod
    def from_options(cls, options, budget=None):
        return cls() if options.fc_to_conv else None

    def rewrite(self, model: ir.Model) -> bool:
        graph = model.graph
        heads = [n for n in graph if n.op_type in ("Flatten", "Reshape")]
        fcs = [n for n in graph if n.op_type in ("Gemm", "MatMul")]
        if not fcs:
            self.note("no fully-connected layer found: nothing to convert")
            return False
        if len(graph.inputs) != 1 or graph.inputs[0].shape is None or len(graph.inputs[0].shape) != 4:
            raise UserInputError("--fc-to-conv needs a model with one NCHW image input")
        image = graph.inputs[0]
        converted = 0
        for head in heads:
            first_fcs = [u.node for u in head.outputs[0].uses()]
            if not first_fcs or any(n.op_type not in ("Gemm", "MatMul") for n in first_fcs):
                continue
            volume = head.inputs[0]
            reason = self._check_volume(head, volume)
            if reason:
                self.note(f"left {', '.join(n.name for n in first_fcs)}: {reason}")
                continue
            self._check_sliding(volume, image)
            self._check_heads(first_fcs)
            converted += self._convert_chain(graph, head, first_fcs, volume)
        if not converted:
            raise UserInputError("--fc-to-conv found no fully-connected layer reading a flattened CxHxW volume "
                                 "(see the notes with --report); the model is left as it is")
        self._make_spatial_dynamic(model, image)
        return True

    # -- checks -------------------------------------------------------------------------------
    def _check_volume(self, head: ir.Node, volume: ir.Value) -> str | None:
        if volume.shape is None or len(volume.shape) != 4 or not all(isinstance(d, int) for d in volume.shape[1:]):
            return "its input is not a flattened CxHxW volume of known size"
        if head.op_type == "Flatten" and attr(head, "axis", 1) != 1:
            return "Flatten does not keep the batch axis apart (axis != 1)"
        if head.op_type == "Reshape":
            target = const(head.inputs[1])
            size = int(np.prod(volume.shape[1:]))
            if target is None or len(target) != 2 or not (target[1] in (-1, size)):
                return "Reshape does not flatten the volume to (N, C*H*W)"
        return None

    def _check_sliding(self, volume: ir.Value, image: ir.Value) -> None:
        """Every node between the image and the head must be a sliding-window operation."""
        seen, stack = set(), [volume]
        while stack:
            v = stack.pop()
            node = v.producer()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "GlobalAveragePool" and v is volume:
                pass  # the head's own pool: converted to a fixed window below
            elif node.op_type not in SLIDING_OPS:
                raise UserInputError(
                    f"--fc-to-conv refused: {node.name or node.op_type} ({node.op_type}) between the input and the "
                    "classifier does not slide with the image, so the converted network would not equal "
                    "crop-by-crop evaluation")
            if node.op_type == "Concat" and attr(node, "axis", 1) not in (1, -3):
                raise UserInputError(f"--fc-to-conv refused: {node.name} concatenates along a spatial axis")
            stack.extend(i for i in node.inputs if i is not None and i.const_value is None)

    # -- rewrite ------------------------------------------------------------------------------
    def _convert_chain(self, graph: ir.Graph, head: ir.Node, first_fcs: list[ir.Node], volume: ir.Value) -> int:
        c, h, w = (int(d) for d in volume.shape[1:])
        pool = volume.producer()
        if pool is not None and pool.op_type == "GlobalAveragePool":
            # The feature size the pool averaged at training time becomes a fixed window.
            feat = pool.inputs[0].shape
            if feat is None or not all(isinstance(d, int) for d in feat[2:]):
                raise UserInputError("--fc-to-conv refused: the global pool's input size is unknown")
            window = [int(feat[2]), int(feat[3])]
            avg = ir.node("AveragePool", [pool.inputs[0]], {"kernel_shape": window, "strides": [1, 1]},
                          name=f"{pool.name}_window")
            graph.insert_before(pool, avg)
            replace_value(pool.outputs[0], avg.outputs[0])
            graph.remove(pool, safe=True)
            self.note(f"{pool.name}: global average pool -> {window[0]}x{window[1]} average pool, stride 1")
        converted = 0
        replace_value(head.outputs[0], head.inputs[0])
        graph.remove(head, safe=True)
        # A head may branch (class scores and boxes after one shared FC): every FC of the tree is converted, each
        # reading its parent's channels through a kernel of the parent's output size.
        pending = [(fc, c, (h, w)) for fc in first_fcs]
        while pending:
            current, channels, kernel = pending.pop(0)
            weight_bias = self._fc_weights(current)
            if weight_bias is None:
                raise UserInputError(f"--fc-to-conv refused: {current.name} is not a Gemm/MatMul with constant "
                                     "weights, and it reads a layer this pass turns into a convolution")
            weight, bias, last = weight_bias  # weight (O, K), last: the node whose output is the FC's result
            k_expected = channels * kernel[0] * kernel[1]
            if weight.shape[1] != k_expected:
                raise UserInputError(f"--fc-to-conv refused: {current.name} reads {weight.shape[1]} values, "
                                     f"not the {k_expected} of a {channels}x{kernel[0]}x{kernel[1]} volume")
            o = weight.shape[0]
            w_val = add_initializer(graph, f"{current.name}_conv_weight", weight.reshape(o, channels, *kernel))
            inputs = [current.inputs[0], w_val]
            if bias is not None:
                inputs.append(add_initializer(graph, f"{current.name}_conv_bias", bias))
            conv = ir.node("Conv", inputs, {"kernel_shape": list(kernel), "strides": [1, 1], "pads": [0, 0, 0, 0]},
                           name=f"{current.name}_as_conv")
            graph.insert_before(current, conv)
            replace_value(last.outputs[0], conv.outputs[0])
            graph.remove([last, current] if last is not current else current, safe=True)
            self.note(f"{current.name}: FC {weight.shape[1]}->{o} -> Conv {kernel[0]}x{kernel[1]} ({channels}->{o})")
            converted += 1
            following, _ = self._next_fcs(conv.outputs[0], rewrite=True)
            pending.extend((fc, o, (1, 1)) for fc in following)
        return converted

    def _check_heads(self, first_fcs: list[ir.Node]) -> None:
        """Before any rewrite: every op the converted layers feed must take an (N, O, h, w) map, else refuse."""
        pending = list(first_fcs)
        while pending:
            fc = pending.pop()
            weight_bias = self._fc_weights(fc)
            if weight_bias is None:
                raise UserInputError(f"--fc-to-conv refused: {fc.name} is not a Gemm/MatMul with constant weights, "
                                     "and it reads a layer this pass would turn into a convolution")
            following, blockers = self._next_fcs(weight_bias[2].outputs[0], rewrite=False)
            if blockers:
                node = blockers[0]
                raise UserInputError(f"--fc-to-conv refused: {node.name or node.op_type} ({node.op_type}) reads the "
                                     f"output of {fc.name} and takes only (N, K) vectors, not the (N, K, h, w) maps "
                                     "the conversion makes; the model is left as it is")
            pending.extend(following)

    def _next_fcs(self, value: ir.Value, rewrite: bool) -> tuple[list[ir.Node], list[ir.Node]]:
        """The FC layers reached from a converted layer's output through element-wise ops, on every branch, and
        the ops that stop the walk without being element-wise. With rewrite=True, ops whose parameters index
        the class axis (Softmax's axis, PRelu's per-channel slope) are adapted to the (N, O, h, w) layout."""
        fcs, blockers, values, seen = [], [], [value], set()
        while values:
            for use in list(values.pop().uses()):
                node = use.node
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in ("Gemm", "MatMul"):
                    fcs.append(node)
                    continue
                if node.op_type == "Softmax":
                    if attr(node, "axis", -1) not in (1, -1):
                        blockers.append(node)
                        continue
                    if rewrite:
                        node.attributes["axis"] = ir.AttrInt64("axis", 1)  # the class axis of an (N, O, h, w) map
                elif node.op_type == "PRelu":
                    slope = const(node.inputs[1])
                    if slope is None or slope.size > 1 and slope.ndim > 1 and slope.shape[-1] != slope.size:
                        blockers.append(node)
                        continue
                    if rewrite and slope.size > 1:  # one slope per channel: along axis 1 of the map
                        node.replace_input_with(1, add_initializer(node.graph, f"{node.name}_slope_nchw",
                                                                   slope.reshape(-1, 1, 1)))
                elif node.op_type not in ELEMENTWISE_HEAD_OPS:
                    blockers.append(node)
                    continue
                values.extend(o for o in node.outputs if o is not None)
        return fcs, blockers

    def _fc_weights(self, node: ir.Node):
        """(weight as (O, K), bias or None, node producing the final value) for Gemm or MatMul[+Add]."""
        if node.op_type == "Gemm":
            w = const(node.inputs[1])
            if w is None or attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0:
                return None
            w = w if attr(node, "transB", 0) else w.T
            b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if b is not None:
                b = np.broadcast_to(b * attr(node, "beta", 1.0), (w.shape[0],)).astype(w.dtype)
            return np.ascontiguousarray(w), b, node
        if node.op_type == "MatMul":
            w = const(node.inputs[1])
            if w is None or w.ndim != 2:
                return None
            add = sole_consumer(node.outputs[0])
            if add is not None and add.op_type == "Add":
                other = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
                b = const(other)
                if b is not None and b.size == w.shape[1]:
                    return np.ascontiguousarray(w.T), b.reshape(-1), add
            return np.ascontiguousarray(w.T), None, node
        return None

    def _make_spatial_dynamic(self, model: ir.Model, image: ir.Value) -> None:
        graph = model.graph
        dims = list(image.shape)
        training_hw = [int(d) for d in dims[2:]]
        stride = total_stride(graph, image)
        padded = any(any(ints(n, "pads", [0])) or attr(n, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
                     for n in graph if n.op_type in ("Conv", "FusedConv", "MaxPool", "AveragePool"))
        image.shape = ir.Shape([dims[0], dims[1], "height", "width"])
        for node in graph:
            for out in node.outputs:
                if not out.is_graph_output():
                    out.shape = None
        for out in graph.outputs:
            if out.shape is not None and len(out.shape) == 2:
                out.shape = ir.Shape([out.shape[0], out.shape[1], "map_height", "map_width"])
        model.metadata_props[META_STRIDE] = str(stride)
        model.metadata_props[META_WINDOW] = f"{training_hw[0]},{training_hw[1]}"
        model.metadata_props[META_PADDED] = "1" if padded else "0"
        self.note(f"input H and W are now dynamic: an image of {training_hw[0]}+{stride}k pixels gives a (1+k)-cell "
                  f"map of scores, one per {training_hw[0]}x{training_hw[1]} crop at stride {stride}")
        if padded:
            self.note("this network zero-pads inside: a cell can differ from its crop evaluated alone (the crop "
                      "sees zeros where the full image has pixels); `deploykit slide --check` measures by how much")


def total_stride(graph: ir.Graph, image: ir.Value) -> int:
    """Product of the strides along the path from the image to the (converted) classifier."""
    stride, value = 1, image
    while True:
        users = [u.node for u in value.uses()]
        if not users:
            return stride
        node = users[0]  # every branch of a CNN block runs at the same stride; follow one
        if node.op_type in ("Conv", "FusedConv", "MaxPool", "AveragePool", "LpPool"):
            s = ints(node, "strides", [1, 1])
            stride *= int(s[0])
        if not node.outputs or not node.outputs[0].uses():
            return stride
        value = node.outputs[0]
