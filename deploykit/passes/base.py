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

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir


@dataclass(frozen=True)
class PipelineContext:
    """What the pipeline knows that a pass may use, handed over once before it runs (`GraphPass.prepare`).

    input_shapes: one concrete shape per input; validation: the deploykit.validation data every pass is judged
    on (int8's and the bottleneck's accuracy budgets spend it). A pass used on its own gets an empty context.
    """

    input_shapes: dict[str, tuple[int, ...]] | None = None
    validation: Any = None


@dataclass
class NotedResult(ir.passes.PassResult):
    """onnx_ir's PassResult plus the pass's notes: every change made and every candidate refused, with why."""

    notes: tuple[str, ...] = field(default=())


class _Noted:
    name: str = "pass"
    exact: bool = True
    context: PipelineContext = PipelineContext()

    @classmethod
    def from_options(cls, options, budget=None) -> "_Noted | None":
        """This pass configured for a deploykit.options.OptimizeOptions, or None when the options leave it out.
        `budget` is the pipeline's one deploykit.validation.AccuracyBudget, shared by the passes that spend it."""
        raise NotImplementedError(f"{cls.__name__} is not configured by optimize options")

    def prepare(self, context: PipelineContext) -> None:
        self.context = context

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
        return NotedResult(model, modified, tuple(self.notes))

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
        return NotedResult(new, True, tuple(self.notes))

    def rebuild(self, model: ir.Model) -> ir.Model:  # pragma: no cover - abstract
        raise NotImplementedError
