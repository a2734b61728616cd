"""Conv + activation fusion, per target.

ONNX Runtime (target "ort"): Conv followed by Relu, Clip, LeakyRelu, Sigmoid or HardSigmoid
becomes one com.microsoft FusedConv, which applies the activation in the convolution's output loop
instead of a second pass over memory. A residual Conv -> Add(., Z) -> activation becomes FusedConv
with Z as its fourth input (added before the activation), as in every ResNet block. The model then
needs no graph optimisation at load time to get the fusion.

TensorRT (target "tensorrt"): TensorRT fuses Conv+activation itself when it builds an engine, and
it does not implement com.microsoft ops, so the pattern is left as it is and the report says so.

Refused: a Conv whose output has another reader (fusing would hide the pre-activation value from
it), a Clip whose bounds are not constants, and a Conv that is not 2-D.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .graph_tools import attr, const, nodes_of, replace_value, sole_consumer
from .base import GraphPass

FUSABLE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid")


class FuseConvActivationPass(GraphPass):
    exact = True

    @classmethod
    def from_options(cls, options, budget=None):
        # Only on an fp32 graph: the int8 quantizer fuses Conv+Relu itself and ORT has no fp16 FusedConv on the
        # CPU; OpenVINO fuses by itself and cannot read ONNX Runtime's com.microsoft.FusedConv.
        if not options.fuse or options.int8 or options.fp16 or options.target == "openvino":
            return None
        return cls(options.target)

    def __init__(self, target: str = "ort") -> None:
        super().__init__()
        if target not in ("ort", "tensorrt"):
            raise ValueError(f"unknown target {target!r}")
        self.target = target
        self.name = f"fuse[{target}]"

    def rewrite(self, model: ir.Model) -> bool:
        candidates, claimed = [], set()
        for conv in nodes_of(model, "Conv"):
            act = sole_consumer(conv.outputs[0])
            residual = None
            if act is not None and act.op_type == "Add" and act.domain in ("", "ai.onnx"):
                residual = self._residual(conv, act)
                if residual is not None:
                    add, z = act, residual
                    act = sole_consumer(add.outputs[0])
                    # In a downsampling block both operands of the Add are convs: the first one takes it.
                    if act is None or act.op_type not in FUSABLE or id(add) in claimed:
                        continue
                    claimed.add(id(add))
                    candidates.append((conv, act, add, z))
                    continue
            if act is None:
                if conv.outputs[0].uses() and any(u.node.op_type in FUSABLE for u in conv.outputs[0].uses()):
                    self.note(f"left {conv.name}: its output has other readers besides the activation")
                continue
            if act.op_type in FUSABLE and act.domain in ("", "ai.onnx"):
                candidates.append((conv, act, None, None))
        if self.target == "tensorrt":
            if candidates:
                self.note(f"left {len(candidates)} Conv+activation pair(s) as they are: TensorRT fuses them "
                          "itself when it builds the engine")
            return False
        fused = with_sum = 0
        for conv, act, add, z in candidates:
            reason = self._fuse(model, conv, act, add, z)
            if reason:
                self.note(f"left {conv.name}+{act.name}: {reason}")
            else:
                fused += 1
                with_sum += add is not None
        if fused:
            model.opset_imports.setdefault("com.microsoft", 1)
            kinds = sorted({c[1].op_type for c in candidates})
            self.note(f"fused {fused} Conv+{'/'.join(kinds)} into com.microsoft.FusedConv"
                      + (f", {with_sum} of them with the residual Add as input Z" if with_sum else ""))
        return fused > 0

    @staticmethod
    def _residual(conv, add):
        """The other operand of Add when it has the conv output's exact shape (no broadcasting)."""
        a, b = add.inputs
        other = b if a is conv.outputs[0] else a
        if other is conv.outputs[0] or other.const_value is not None:
            return None
        if other.shape is None or conv.outputs[0].shape is None or list(other.shape) != list(conv.outputs[0].shape):
            return None
        return other

    def _fuse(self, model, conv, act, add=None, z=None) -> str | None:
        weight = conv.inputs[1]
        if weight.shape is None or len(weight.shape) != 4:
            return "only 2-D convolutions have a FusedConv kernel"
        params: list[float] = []
        if act.op_type == "Clip":
            bounds = [const(v) if v is not None else None for v in list(act.inputs[1:3]) + [None] * 2][:2]
            if any(v is not None and b is None for v, b in zip(act.inputs[1:3], bounds)):
                return "Clip bounds are not constants"
            lo = float(bounds[0]) if bounds[0] is not None else float(np.finfo(np.float32).min)
            hi = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else float(np.finfo(np.float32).max)
            params = [lo, hi]
        elif act.op_type == "LeakyRelu":
            params = [attr(act, "alpha", 0.01)]
        elif act.op_type == "HardSigmoid":
            params = [attr(act, "alpha", 0.2), attr(act, "beta", 0.5)]
        attributes = {a.name: a.value for a in conv.attributes.values()}
        attributes["activation"] = act.op_type
        if params:
            attributes["activation_params"] = [float(p) for p in params]
        inputs = list(conv.inputs)
        if add is not None:
            # Read Z now: an earlier fusion may have replaced the value this Add reads.
            z = add.inputs[1] if add.inputs[0] is conv.outputs[0] else add.inputs[0]
            if len(inputs) < 3 or inputs[2] is None:
                return "a Conv without bias cannot take the residual input"
            inputs = inputs[:3] + [z]
        fused = ir.node("FusedConv", inputs, attributes, domain="com.microsoft", name=f"{conv.name}_fused")
        fused.outputs[0].type = act.outputs[0].type
        fused.outputs[0].shape = act.outputs[0].shape
        graph = conv.graph
        graph.insert_after(act, fused)
        replace_value(act.outputs[0], fused.outputs[0])
        graph.remove([act, add, conv] if add is not None else [act, conv], safe=True)
        return None
