"""Holding the pipeline's accuracy budget: raise every rank part of the way to break-even until the result holds."""

from __future__ import annotations

import math

import onnx_ir as ir

from .layers import Layer, RAISED_KEEP, RAISED_TIME_SLACK, RAISE_STEPS


class BudgetHold:
    """BottleneckPass's accuracy budget (a mixin)."""

    def _hold_budget(self, model: ir.Model, layers: list[Layer], ranks: dict[str, int]) -> dict[str, int]:
        """The chosen ranks, raised as little as holds the budget on the validation set (module docstring)."""
        from ...errors import VerificationError
        from ...validation import AccuracyJudge

        source = ir.to_proto(model)
        judge = AccuracyJudge.for_budget(source, self.context.validation, self.budget)
        if judge is None:
            self.note("no accuracy budget: the first output has no class axis to measure top-1 agreement on")
            return ranks
        allowance = self.budget.left * self.budget_share
        thin = judge.thin_data_note(allowance)
        if thin:
            self.note(thin)
        by_name = {l.node.name: l for l in layers}

        def raised(step: int) -> dict[str, int]:
            if step == 0:
                return dict(ranks)
            out = {}
            for name, r in ranks.items():
                layer = by_name[name]
                top = layer.break_even_rank()
                if step < RAISE_STEPS and r < top:
                    r = math.ceil(r + (top - r) * step / RAISE_STEPS)
                    # Raised this near break-even, a pair saves under a tenth of the layer's MACs for a second
                    # product and the error it adds: the layer is left whole instead.
                    if layer.macs(r) <= RAISED_KEEP * layer.macs():
                        out[name] = r
            return out

        def drop_at(step: int) -> float:
            return judge.drop_of(ir.to_proto(self._factorised(source, layers, raised(step))))

        drops = {0: drop_at(0)}
        if drops[0] > allowance:
            lo, hi = 1, RAISE_STEPS  # step RAISE_STEPS factorises nothing: it always holds
            while lo < hi:
                mid = (lo + hi) // 2
                drops[mid] = drop_at(mid)
                if drops[mid] <= allowance:
                    hi = mid
                else:
                    lo = mid + 1
            if hi == RAISE_STEPS:
                raise VerificationError(
                    f"--bottleneck {self.mode}={self.value:g} cannot hold an accuracy drop of {allowance:.2f} point(s) "
                    f"({judge.what}): even with every rank raised {RAISE_STEPS - 1}/{RAISE_STEPS} of the way to its "
                    f"break-even it costs {drops.get(RAISE_STEPS - 1, drops[max(drops)]):.2f}; ask for a milder "
                    "bottleneck or a larger --max-accuracy-drop; nothing was written")
            if not raised(hi):
                # The ranks that hold the budget are so near break-even that every layer is left whole: the
                # "result" would be the input, reported as a bottleneck that was not made.
                raise VerificationError(
                    f"--bottleneck {self.mode}={self.value:g} cannot hold an accuracy drop of {allowance:.2f} point(s) "
                    f"({judge.what}) with any layer factorised: the ranks that hold it ({hi}/{RAISE_STEPS} of the way "
                    f"to break-even) leave every layer whole, and {hi - 1}/{RAISE_STEPS} costs "
                    f"{drops.get(hi - 1, drops[0]):.2f}; only the unchanged model holds the budget: ask for a larger "
                    "--max-accuracy-drop or drop --bottleneck; nothing was written")
            self.raised = hi
            if self.mode == "time":
                self._check_time_after_raise(model, layers, raised(hi), allowance, judge.what)
        drop = drops[self.raised]
        self.budget.spent += max(drop, 0.0)
        share = "" if self.budget_share == 1 else f" ({self.budget_share:.0%} of --max-accuracy-drop {self.budget.total:g})"
        if self.raised:
            self.note(f"accuracy budget: the ranks as chosen cost {drops[0]:.2f} points of {judge.what}, over "
                      f"{allowance:.2f}{share}; raised every rank {self.raised}/{RAISE_STEPS} of the way to its "
                      f"break-even ({len(drops)} validation run(s)): drop {drop:.2f} points")
        else:
            self.note(f"accuracy budget: {judge.what} drops {drop:.2f} points, within {allowance:.2f}{share}")
        return raised(self.raised)

    def _check_time_after_raise(self, model: ir.Model, layers: list[Layer], ranks: dict[str, int], allowance: float,
                                what: str) -> None:
        """time=F is a promise about latency: ranks raised for accuracy run slower than those chosen for F, and
        raised most of the way to break-even they can run slower than the layers left whole. Timed again; where
        they miss F by more than RAISED_TIME_SLACK, refused rather than written as a bottleneck that does not pay."""
        from ...errors import VerificationError

        measured = self._measured_ratio(model, layers, ranks)
        limit = max(self.value, self.time_ratio or self.value) + RAISED_TIME_SLACK
        if measured > limit:
            raise VerificationError(
                f"--bottleneck time={self.value:g} cannot hold an accuracy drop of {allowance:.2f} point(s) ({what}) "
                f"in its time: the ranks that hold it (every rank raised {self.raised}/{RAISE_STEPS} of the way to "
                f"its break-even) run in {measured:.2f} of the measured time, over {limit:.2f}; ask for a milder "
                "time budget or a larger --max-accuracy-drop; nothing was written")
        self.note(f"time budget after the raise: the raised ranks run in {measured:.2f} of the measured time, timed "
                  "beside the model as it is")
