"""Fold BatchNormalization into the linear layer before it.

In inference BN is an affine map per channel c:  y = s_c * (x - mean_c) + beta_c,
with s_c = gamma_c / sqrt(var_c + eps). When x = W * u + b comes from a Conv, each output channel
c of W is scaled by s_c and the bias becomes s_c * (b_c - mean_c) + beta_c. The same holds for
ConvTranspose (its output channels are weight axis 1), and for Gemm / MatMul on a 2-D output whose
columns are BN's channels. The BN node disappears. A BN after the Add of two such layers' outputs (a decoder summing an
upsampled ConvTranspose and a lateral Conv) folds into both: each is scaled, and BN's shift goes
into one bias.

Refused (left alone, with a note): a layer whose output has another reader besides the BN, a BN or
layer whose parameters are not constants, a grouped ConvTranspose, a Gemm with transA or alpha/beta
other than 1, and a MatMul whose output is not 2-D.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .graph_tools import add_initializer, attr, const, nodes_of, replace_value, sole_consumer
from .base import GraphPass

_LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class FoldBatchNormPass(GraphPass):
    name = "fold"
    exact = True

    @classmethod
    def from_options(cls, options, budget=None):
        return cls() if options.fold else None

    def rewrite(self, model: ir.Model) -> bool:
        folded = 0
        for bn in nodes_of(model, "BatchNormalization"):
            reason = self._fold(bn)
            if reason is None:
                folded += 1
            else:
                self.note(f"left {bn.name or 'BatchNormalization'}: {reason}")
        if folded:
            self.note(f"folded {folded} BatchNormalization node(s) into the layer before")
        return folded > 0

    def _fold(self, bn: ir.Node) -> str | None:
        x = bn.inputs[0]
        layer = x.producer()
        if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
            return "it is in training mode (running statistics are read)"
        if layer is not None and layer.op_type == "Add" and layer.domain in ("", "ai.onnx"):
            return self._fold_after_add(bn, layer)
        if layer is None or layer.op_type not in _LINEAR or layer.domain not in ("", "ai.onnx"):
            return "its input does not come from a Conv, ConvTranspose, Gemm or MatMul"
        if sole_consumer(x) is not bn:
            return f"the output of {layer.name} has other readers"
        affine = _affine(bn)
        if isinstance(affine, str):
            return affine
        scale, offset = affine
        plan = _plan(layer, x, scale, offset)
        if isinstance(plan, str):
            return plan
        graph = bn.graph
        plan()
        replace_value(bn.outputs[0], bn.inputs[0])  # the layer's output, or the Gemm that replaced a MatMul
        graph.remove(bn, safe=True)
        return None

    def _fold_after_add(self, bn: ir.Node, add: ir.Node) -> str | None:
        """BN(L1(u) + L2(v)) = L1'(u) + L2'(v): both layers scaled, BN's shift added to one bias.

        Exact when both addends come straight from linear layers read only by the Add and the Add is
        read only by the BN: each layer's channels are BN's (checked), and scaling distributes over
        the sum, broadcasting included.
        """
        if sole_consumer(add.outputs[0]) is not bn:
            return f"the output of {add.name} has other readers"
        layers = [v.producer() for v in add.inputs]
        if any(l is None or l.op_type not in _LINEAR or l.domain not in ("", "ai.onnx") for l in layers) \
                or layers[0] is layers[1]:
            return f"its input comes from {add.name}, whose addends are not both Conv, ConvTranspose, Gemm or MatMul"
        if any(sole_consumer(v) is not add for v in add.inputs):
            return f"an addend of {add.name} has other readers"
        affine = _affine(bn)
        if isinstance(affine, str):
            return affine
        scale, offset = affine
        plans = [_plan(layers[0], add.inputs[0], scale, np.zeros_like(offset)),
                 _plan(layers[1], add.inputs[1], scale, offset)]
        refused = next((p for p in plans if isinstance(p, str)), None)
        if refused:
            return refused
        graph = bn.graph
        for p in plans:
            p()
        replace_value(bn.outputs[0], add.outputs[0])
        graph.remove(bn, safe=True)
        return None


def _affine(bn: ir.Node):
    """(scale, offset) with BN(x) = scale * x + offset per channel, or why not."""
    params = [const(v) for v in bn.inputs[1:5]]
    if any(p is None for p in params):
        return "its scale, bias, mean or variance is not a constant"
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _plan(layer: ir.Node, x: ir.Value, scale: np.ndarray, offset: np.ndarray):
    """A function that makes `layer` compute scale * layer(u) + offset per output channel, or why it cannot."""
    weight = const(layer.inputs[1])
    if weight is None:
        return f"the weight of {layer.name} is not a constant"
    bias_value = layer.inputs[2] if len(layer.inputs) > 2 else None
    if bias_value is not None and const(bias_value) is None:
        return f"the bias of {layer.name} is not a constant"
    dtype = weight.dtype
    w = weight.astype(np.float64)
    op = layer.op_type
    if op == "Conv":
        channels, new_w = w.shape[0], w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    elif op == "ConvTranspose":
        if attr(layer, "group", 1) != 1:
            return "grouped ConvTranspose is not folded"
        channels, new_w = w.shape[1], w * scale.reshape(1, -1, *([1] * (w.ndim - 2)))
    elif op == "Gemm":
        if attr(layer, "transA", 0) or attr(layer, "alpha", 1.0) != 1.0 or attr(layer, "beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta is not folded"
        if attr(layer, "transB", 0):
            channels, new_w = w.shape[0], w * scale.reshape(-1, 1)
        else:
            channels, new_w = w.shape[1], w * scale.reshape(1, -1)
    else:  # MatMul
        a_shape = layer.inputs[0].shape
        rank = len(x.shape) if x.shape is not None else (len(a_shape) if a_shape is not None else None)
        if w.ndim != 2 or rank != 2:
            return "MatMul is folded only when its output is 2-D"
        channels, new_w = w.shape[1], w * scale.reshape(1, -1)
    if channels != scale.shape[0]:
        return f"channel count {channels} does not match the BatchNorm's {scale.shape[0]}"
    b = const(bias_value).astype(np.float64) if bias_value is not None else np.zeros(channels)
    if op == "Gemm" and b.shape != (channels,):
        if b.size not in (1, channels):
            return "Gemm bias is not per-channel"
        b = np.broadcast_to(b, (channels,)).copy()
    new_b = b * scale + offset

    def apply() -> None:
        graph = layer.graph
        w_value = add_initializer(graph, f"{layer.name or op}_folded_weight", new_w.astype(dtype))
        b_value = add_initializer(graph, f"{layer.name or op}_folded_bias", new_b.astype(dtype))
        if op == "MatMul":
            # MatMul has no bias input: it becomes Gemm, which does.
            gemm = ir.node("Gemm", [layer.inputs[0], w_value, b_value], name=layer.name)
            graph.insert_after(layer, gemm)
            replace_value(layer.outputs[0], gemm.outputs[0])
            graph.remove(layer, safe=True)
            return
        layer.replace_input_with(1, w_value)
        if len(layer.inputs) <= 2:
            layer.resize_inputs(3)
        layer.replace_input_with(2, b_value)

    return apply
