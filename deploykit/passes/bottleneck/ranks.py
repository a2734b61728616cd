"""Choosing a rank per layer: by spec, by MACs budget (macs=) or measured time (time=)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ...errors import UnreachableBudget
from .layers import GRID_POINTS, Layer, PAYOFF, RANK_FLOOR, TIME_CHECKS, TIME_TOLERANCE, pays
from ...model_timing import ModelTimer


class RankChoice:
    """The rank allocation of BottleneckPass (a mixin: it reads the pass's mode, value and notes)."""

    # Times whole models beside the source (time=F); a class attribute so that logic tests can inject a timer.
    model_timer = ModelTimer
    time_ratio: float | None = None  # time=F: the measured latency of the ranks as chosen, over the source's

    def _choose_ranks(self, layers: list[Layer], model: ir.Model) -> dict[str, int]:
        if self.mode == "rank":
            return {l.node.name: min(int(self.value), l.max_useful_rank()) for l in layers}
        if self.mode == "ratio":
            return {l.node.name: max(l.min_rank(), min(round(self.value * l.cin), l.max_useful_rank())) for l in layers}
        if self.mode == "energy":
            out = {}
            for l in layers:
                energy = np.cumsum(l.s ** 2) / max(float(np.sum(l.s ** 2)), 1e-30)
                r = min(int(np.searchsorted(energy, self.value - 1e-12) + 1), l.max_useful_rank())
                out[l.node.name] = max(r, l.min_rank())
            return out
        self._time_layers(layers)
        if self.mode == "time":
            return self._time_budget(layers, model)
        return self._budget(layers, model)

    def _time_layers(self, layers: list[Layer]) -> None:
        """Each candidate and its pair at GRID_POINTS ranks, timed at its shapes (or read from the cache)."""
        from ...model_timing import ConvTimer

        from ...machine import cpu_flags

        # ONNX Runtime's blocked CPU layout packs channels 16 (AVX-512) or 8 (AVX2) at a time: a thin conv
        # whose width is not a multiple runs far below its MACs (measured: rank 34 of a 256-channel 3x3 at
        # 14x14 took 0.52 of the layer's time for 0.15 of its MACs; rank 32 took 0.18 for 0.18).
        block = 16 if "avx512f" in cpu_flags() else 8
        timer = ConvTimer()
        for l in layers:
            if l.spec is None:
                continue
            l.t_full = timer.conv(l.spec)
            lo, hi = l.min_rank(), l.break_even_rank()
            if hi < lo:
                continue
            # The floor itself stays a candidate (the deepest cut a budget may need), then every multiple.
            ranks = [lo] + [r for r in range(block, hi + 1, block) if r > lo]
            if len(ranks) > GRID_POINTS:
                picked = {int(round(v)) for v in np.geomspace(1, len(ranks), GRID_POINTS)}
                ranks = [ranks[i - 1] for i in sorted(picked)]
            l.t_grid = {r: timer.pair(l.spec, r) for r in ranks}
        timer.save()
        timed = sum(1 for l in layers if l.t_full is not None)
        self.note(f"timed {timed} layer(s) and their pairs at their shapes in ONNX Runtime on this machine "
                  f"({timer.measured} measured now, the rest from the cache)")

    def _time_budget(self, layers: list[Layer], model: ir.Model) -> dict[str, int]:
        """time=F: the model's measured batch-1 latency cut to F, spending measured time, not MACs.

        The layer timings predict the cut; each prediction is then checked by timing the factorised model
        beside the model as it is (interleaved, so the machine's drift falls on both), and the target the
        allocation aims at is corrected by what was measured, at most TIME_CHECKS times."""
        source = ir.to_proto(model)
        timed = [l for l in layers if l.t_grid]
        with self.model_timer(model, self.input_shapes) as timer:
            total = timer.seconds()
            # Isolated layers and the whole model are timed apart: where the layers sum to more than the model,
            # nothing else is left, and F applies to what the timings see.
            seen = max(total, sum(l.t_full for l in timed))
            others = seen - sum(l.t_full for l in timed)
            aim, checks = self.value, []
            for _ in range(TIME_CHECKS):
                choice, cost = self._allocate(timed, others, aim * seen, lambda l, r: l.time(r))
                if cost > aim * seen and not checks:
                    reachable = f"time={min(1.0, math.ceil((cost / seen + 0.03) * 100) / 100):g}"
                    raise UnreachableBudget(
                        f"--bottleneck time={self.value:g} cannot be reached: factorising every timed layer "
                        f"down to its rank floor leaves {cost / seen:.2f} of the measured time ({total * 1e3:.3g} ms "
                        f"at batch 1); ask for {reachable} or more (a margin for the run-to-run noise of the measured "
                        "latency)", reachable)
                ranks = {k: v for k, v in choice.items() if v is not None}
                measured = timer.ratio(self._factorised(source, layers, ranks))
                checks.append((abs(measured - self.value), measured, cost / seen, ranks))
                if abs(measured - self.value) <= TIME_TOLERANCE * self.value:
                    break
                aim = min(1.0, max(0.05, aim * self.value / measured))
        _, measured, predicted, ranks = min(checks, key=lambda c: c[0])
        self.time_ratio = measured
        trail = ", ".join(f"{c[2]:.2f} -> {c[1]:.2f}" for c in checks)
        self.note(f"time budget: {total * 1e3:.3g} ms at batch 1 measured here; the chosen ranks run in "
                  f"{measured:.2f} of it, timed beside the model as it is ({len(checks)} check(s), predicted -> "
                  f"measured: {trail})")
        return ranks

    def _measured_ratio(self, model: ir.Model, layers: list[Layer], ranks: dict[str, int]) -> float:
        """The latency of `model` with `ranks` applied over its own, the two timed side by side."""
        with self.model_timer(model, self.input_shapes) as timer:
            return timer.ratio(self._factorised(ir.to_proto(model), layers, ranks))

    def _factorised(self, source, layers: list[Layer], ranks: dict[str, int]) -> ir.Model:
        """A copy of `source` (a ModelProto) with `ranks` applied, as rewrite() would; the layers stay bound
        to the model being rewritten."""
        trial = ir.from_proto(source)
        nodes = {n.name: n for n in trial.graph}
        by_name = {l.node.name: l for l in layers}
        originals = [l.node for l in layers]
        try:
            for name, r in ranks.items():
                if by_name[name].macs(r) >= by_name[name].macs():
                    continue  # left as it is by rewrite() too
                by_name[name].node = nodes[name]
                self._replace(by_name[name], r)
            return trial
        finally:
            for l, node in zip(layers, originals):
                l.node = node

    def _allocate(self, layers, others, target, cost_of, allowed=lambda l, r: True):
        """Lagrangian allocation: each layer picks r minimising error(r)^2 * macs + lambda * cost(r), lambda
        found by bisection so the total cost meets `target`. Returns (choice, total cost)."""

        def pick(lam):
            choice, cost = {}, others
            for l in layers:
                full = cost_of(l, None)
                best_r, best = None, full * lam  # keeping the layer: no error, full cost
                for r in l.candidate_ranks():
                    if not allowed(l, r):
                        continue
                    value = l.error(r) ** 2 * l.macs() + lam * cost_of(l, r)
                    if value < best:
                        best_r, best = r, value
                choice[l.node.name] = best_r
                cost += cost_of(l, best_r) if best_r else full
            return choice, cost

        lo, hi = 0.0, 1.0
        while pick(hi)[1] > target and hi < 1e12:
            hi *= 2
        choice, cost = pick(hi)
        if cost > target:
            return choice, cost
        for _ in range(40):
            mid = (lo + hi) / 2
            c, cc = pick(mid)
            if cc <= target:
                hi, choice, cost = mid, c, cc
            else:
                lo = mid
        return choice, cost

    def _budget(self, layers: list[Layer], model: ir.Model) -> dict[str, int]:
        """macs=F: the model's MACs cut to F, at the timed ranks (multiples of the CPU's channel block)."""
        total = self._total_macs
        target = self.value * total
        others = total - sum(l.macs() for l in layers)
        macs = lambda l, r: l.macs(r)  # noqa: E731
        # Ranks whose time pays first; where those cannot reach F, KxK layers are taken on MACs alone.
        choice, cost = self._allocate(layers, others, target, macs, allowed=lambda l, r: pays(l, r, True))
        if cost > target:
            choice, cost = self._allocate(layers, others, target, macs, allowed=pays)
            if cost <= target:
                self.note(f"macs={self.value:g} needs KxK ranks whose measured time saves less than {PAYOFF:g} of "
                          "the MACs they save: expect a speed-up below the MAC cut")
        if cost > target:
            reachable = f"macs={math.ceil(cost / total * 100) / 100:g}"
            raise UnreachableBudget(
                f"--bottleneck macs={self.value:g} cannot be reached: factorising the dense KxK convolutions down to "
                f"their rank floor ({RANK_FLOOR} channels, a quarter of a thinner layer's) and the 1x1 and "
                f"fully-connected ones as far as their measured time pays leaves {cost / total:.2f} of the MACs; ask "
                f"for {reachable} or more", reachable)
        return {k: v for k, v in choice.items() if v is not None}
