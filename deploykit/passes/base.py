"""The pass contract: a small, named, in-place rewrite of an onnx_ir Model that says what it did.

Follows onnx_ir's pass framework (`InPlacePass`, `PassResult(model, modified)`, `requires`) and
adds what deploykit's report needs: whether the pass is *exact* (must not move the outputs beyond
float rounding, so the pipeline fails when it does) or *approximating* (its deviation is reported),
and human-readable notes of every change made and every candidate it refused, with the reason.
"""

from __future__ import annotations

import onnx_ir as ir


class GraphPass(ir.passes.InPlacePass):
    name: str = "pass"
    exact: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.notes = []
        modified = bool(self.rewrite(model))
        return ir.passes.PassResult(model, modified)

    def rewrite(self, model: ir.Model) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
