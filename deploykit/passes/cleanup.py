"""Cleanup: shape inference, constant folding, and removal of what inference never needs.

Identity and inference-mode Dropout nodes are bypassed, nodes whose outputs nobody reads are
removed, unused initializers dropped, and identical initializers merged into one.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from .graph_tools import replace_value
from .base import GraphPass


class CleanupPass(GraphPass):
    name = "cleanup"
    exact = True

    @classmethod
    def from_options(cls, options, budget=None):
        return cls()  # always: every later pass and the report rely on a tidy, named graph

    def rewrite(self, model: ir.Model) -> bool:
        before_nodes = model.graph.num_nodes()
        before_inits = len(model.graph.initializers)
        modified = False

        # Every later pass, the accounting and the reports name nodes: a model exported without node names (ORT's
        # quantizer, hand-built graphs) gets unique ones, else all its layers share the name "".
        taken = {node.name for node in model.graph if node.name}
        unnamed = 0
        for index, node in enumerate(model.graph):
            if not node.name:
                name = f"{node.op_type}_{index}"
                while name in taken:
                    name += "_"
                node.name = name
                taken.add(name)
                unnamed += 1
        if unnamed:
            self.note(f"named {unnamed} unnamed node(s) after their op and position")
            modified = True

        removed_dropout = 0
        for node in list(model.graph):
            if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
                training = node.inputs[2] if len(node.inputs) > 2 else None
                mask_used = len(node.outputs) > 1 and bool(node.outputs[1].uses())
                if training is not None and training.const_value is None:
                    self.note(f"kept {node.name}: its training_mode is not a constant")
                    continue
                if mask_used:
                    self.note(f"kept {node.name}: its mask output is read")
                    continue
                replace_value(node.outputs[0], node.inputs[0])
                removed_dropout += 1
                modified = True

        try:
            import onnxscript.optimizer as oso

            folded = oso.fold_constants(model)
            modified |= bool(getattr(folded, "modified", False))
        except ImportError:  # pragma: no cover - onnxscript is a dependency
            self.note("constant folding skipped: onnxscript is not installed")

        lifted = common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model).modified
        if lifted:
            self.note("weights stored as Constant nodes are initializers now")
        modified |= lifted
        for p in (common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
                  common.DeduplicateInitializersPass(), common.RemoveUnusedOpsetsPass()):
            modified |= p(model).modified
        try:
            common.ShapeInferencePass()(model)
        except Exception as exc:  # shape inference is advisory here
            self.note(f"shape inference incomplete: {str(exc).splitlines()[0]}")

        removed_nodes = before_nodes - model.graph.num_nodes()
        removed_inits = before_inits - len(model.graph.initializers)
        if removed_dropout:
            self.note(f"removed {removed_dropout} Dropout node(s)")
        if removed_nodes:
            self.note(f"{removed_nodes} node(s) removed in all")
        if removed_inits > 0:
            self.note(f"{removed_inits} initializer(s) removed or merged")
        elif removed_inits < 0:
            self.note(f"{-removed_inits} initializer(s) added (folded constants and lifted Constant nodes)")
        return modified or removed_nodes != 0 or removed_inits != 0
