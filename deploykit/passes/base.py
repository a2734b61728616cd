"""The pass contract: a small, named rewrite of an onnx_ir Model that says what it did.

Follows onnx_ir's pass framework (`PassResult(model, modified)`, `requires`/`ensures`, the declared
in-place property) and adds what deploykit's report needs: whether the pass is *exact* (must not
move the outputs beyond float rounding, so the pipeline fails when it does) or *approximating*
(its deviation is reported), and human-readable notes of every change made and every candidate it
refused, with the reason.

GraphPass rewrites the model in place. RebuildPass returns a new model: for passes that hand the
whole graph to an outside tool (ONNX Runtime's quantizer, the float16 converter).
"""

from __future__ import annotations

import onnx_ir as ir


class _Noted:
    name: str = "pass"
    exact: bool = True

    def _init_notes(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GraphPass(_Noted, ir.passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self._init_notes()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.notes = []
        modified = bool(self.rewrite(model))
        return ir.passes.PassResult(model, modified)

    def rewrite(self, model: ir.Model) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class RebuildPass(_Noted, ir.passes.FunctionalPass):
    exact = False

    def __init__(self) -> None:
        super().__init__()
        self._init_notes()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.notes = []
        new = self.rebuild(model)
        # Provenance (recorded input shape, FC->CONV stride...) survives the outside tool.
        for key, value in model.metadata_props.items():
            new.metadata_props.setdefault(key, value)
        return ir.passes.PassResult(new, True)

    def rebuild(self, model: ir.Model) -> ir.Model:  # pragma: no cover - abstract
        raise NotImplementedError
