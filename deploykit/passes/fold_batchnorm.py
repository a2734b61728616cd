"""Fold BatchNormalization into the linear layer before it.

In inference BN is an affine map per channel c:  y = s_c * (x - mean_c) + beta_c,
with s_c = gamma_c / sqrt(var_c + eps). When x = W * u + b comes from a Conv, each output channel
c of W is scaled by s_c and the bias becomes s_c * (b_c - mean_c) + beta_c. The same holds for
ConvTranspose (its output channels are weight axis 1), and for Gemm / MatMul on a 2-D output whose
columns are BN's channels. The BN node disappears.

Refused (left alone, with a note): a layer whose output has another reader besides the BN, a BN or
layer whose parameters are not constants, a grouped ConvTranspose, a Gemm with transA or alpha/beta
other than 1, and a MatMul whose output is not 2-D.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import add_initializer, attr, const, nodes_of, replace_value, sole_consumer
from .base import GraphPass

_LINEAR = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class FoldBatchNormPass(GraphPass):
    name = "fold"
    exact = True

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
        if layer is None or layer.op_type not in _LINEAR or layer.domain not in ("", "ai.onnx"):
            return "its input does not come from a Conv, ConvTranspose, Gemm or MatMul"
        if sole_consumer(x) is not bn:
            return f"the output of {layer.name} has other readers"
        if len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
            return "it is in training mode (running statistics are read)"
        params = [const(v) for v in bn.inputs[1:5]]
        if any(p is None for p in params):
            return "its scale, bias, mean or variance is not a constant"
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = attr(bn, "epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)

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
            b = np.broadcast_to(b, (channels,)).copy() if b.size in (1, channels) else None
            if b is None:
                return "Gemm bias is not per-channel"
        new_b = (b - mean) * scale + beta

        graph = layer.graph
        w_value = add_initializer(graph, f"{layer.name or op}_folded_weight", new_w.astype(dtype))
        b_value = add_initializer(graph, f"{layer.name or op}_folded_bias", new_b.astype(dtype))
        if op == "MatMul":
            # MatMul has no bias input: it becomes Gemm, which does.
            gemm = ir.node("Gemm", [layer.inputs[0], w_value, b_value], name=layer.name)
            graph.insert_after(layer, gemm)
            replace_value(bn.outputs[0], gemm.outputs[0])
            graph.remove([bn, layer], safe=True)
            return None
        layer.replace_input_with(1, w_value)
        if len(layer.inputs) > 2:
            layer.replace_input_with(2, b_value)
        else:
            layer.resize_inputs(3)
            layer.replace_input_with(2, b_value)
        replace_value(bn.outputs[0], layer.outputs[0])
        graph.remove(bn, safe=True)
        return None
