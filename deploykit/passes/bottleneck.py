"""Insert low-rank 1x1 bottlenecks: a KxK Conv (Cin -> Cout) becomes 1x1 (Cin -> r) then KxK (r -> Cout).

(cs231n / GoogLeNet's 1x1 reductions.) Write the weight as a matrix M of shape (Cout*K*K, Cin): row
(o, i, j) holds the weights that output channel o applies at kernel offset (i, j) to every input
channel. A 1x1 conv to r channels followed by a KxK conv computes exactly the KxK conv with weight
M' = B A, for A (r x Cin) and B (Cout*K*K x r). The truncated SVD M ~= U_r S_r V_r^T is the best
rank-r choice (Eckart-Young), so A = V_r^T and B = U_r S_r. Zero padding commutes with the 1x1
conv (it has no bias), so the pair equals the rank-r convolution exactly.

MACs: Cout*Cin*K*K*Ho*Wo before; Cin*r*Hi*Wi + r*Cout*K*K*Ho*Wo after. A layer is only replaced
when that is fewer. The rank comes from the spec: rank=N, ratio=F (of Cin), energy=E (kept share
of the squared singular values), macs=F (the whole model's MACs cut to F of what they were,
spending rank where it costs the least error) or time=F (its measured batch-1 latency cut to F).

A 1x1 conv (K = 1: the same factorisation, two 1x1 convs) often runs slower than its MACs say once
split, so under rank=/ratio=/energy= only named ones are factorised. macs= and time= time every
candidate (below) and take a 1x1 layer (stride 1, unpadded) at a rank only where its measured time
pays: under time= by construction; under macs= where the rank saves at least PAYOFF of the layer's
time per share of its MACs it saves (a rank with 1/4 of the MACs must take at most 1 - 0.9 x 3/4 of
the time). KxK ranks are held to the same rule first and taken on MACs alone only where the budget
needs them. ResNet-50 and DenseNet-121 spend over half their MACs in 1x1 layers: without them
macs=0.5 cannot be reached there at all.

Under an accuracy budget (--max-accuracy-drop with --validate data) the chosen ranks are checked on
the validation set; where they cost more than the pass's share of the budget every rank is raised
part of the way to its layer's break-even rank (the point where factorising stops saving MACs), the
smallest raise that holds found by bisection over RAISE_STEPS steps, about log2(8) + 1 validation
runs. When only leaving the model as it is would hold, the pass refuses: the budget cannot be met.

Thin convolutions run below the machine's efficiency, so MACs overstate what a cut buys, most of
all at ranks that are not a multiple of the CPU's channel block (16 with AVX-512, 8 with AVX2),
which ONNX Runtime's blocked layout packs. The budget modes therefore choose among multiples of the
block only, each candidate layer and its pair timed at those ranks at the layer's real shapes in
ONNX Runtime on this machine (deploykit.passes._conv_timing, cached per machine); under time=F the
allocation spends the measured time rather than MACs, and its prediction is checked by timing the
factorised model beside the source, the aim corrected by what was measured (at most TIME_CHECKS).

With calibration data the factorisation is data-aware: it minimises the error on the layer's
actual inputs, ||(M - M') X||, rather than on the weights alone. With C = E[x x^T] the per-pixel
channel covariance of the layer's input, the best M' is U_r S_r V_r^T C^(-1/2) where
U S V^T = M C^(1/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..errors import UnreachableBudget, UserInputError  # noqa: F401  (UnreachableBudget: its old home)
from ._graph import add_initializer, attr, const, ints, replace_value
from .base import GraphPass

MODES = ("rank", "ratio", "energy", "macs", "time")
MEASURED_MODES = ("macs", "time")  # the modes that time each candidate and choose among the timed ranks
PAYOFF = 0.9  # under macs=, a rank pays when its share of time saved is at least this times its share of MACs saved
RANK_FLOOR = 8
RAISED_KEEP = 0.9  # a raised rank is kept only while its pair costs at most this share of the layer's MACs
RAISE_STEPS = 8  # rank raises tried under an accuracy budget: step k moves every rank k/8 of the way to break-even
GRID_POINTS = 12  # at most this many ranks timed per layer, between its floor and its break-even rank
TIME_CHECKS = 3  # time=F: factorised models timed beside the source to correct the layer timings' prediction
TIME_TOLERANCE = 0.05  # ... stopping once one lands within this share of F


@dataclass
class _Layer:
    node: ir.Node
    weight: np.ndarray  # (Cout, Cin, K, K)
    in_hw: int          # Hi * Wi
    out_hw: int         # Ho * Wo
    u: np.ndarray = None
    s: np.ndarray = None
    vt: np.ndarray = None
    whiten_inv: np.ndarray | None = None
    spec: dict | None = None  # the shapes and attributes the timings are measured at (None: not timed)
    t_full: float | None = None  # measured seconds of the layer as it is, batch 1
    t_grid: dict | None = None  # rank -> measured seconds of the 1x1 + KxK pair
    # "conv", or "gemm" / "matmul" for a fully-connected layer, its weight held as (Cout, Cin, 1, 1) and
    # in_hw = out_hw = the rows it multiplies per sample (1 after a Flatten)
    kind: str = "conv"

    def time(self, r=None) -> float | None:
        """Measured seconds at rank r (None: the layer as it is)."""
        if r is None or self.t_full is None:
            return self.t_full
        return (self.t_grid or {}).get(r)

    def candidate_ranks(self) -> list[int]:
        """The ranks a budget may choose: the timed ones where the layer was timed, else every rank that pays."""
        if self.t_grid:
            return sorted(self.t_grid)
        return list(range(self.min_rank(), self.break_even_rank() + 1))

    def break_even_rank(self) -> int:
        """The largest rank whose pair still costs fewer MACs than the layer."""
        per_rank = self.cin * self.in_hw + self.cout * self.kk * self.out_hw
        return min(self.max_useful_rank(), (self.macs() - 1) // per_rank)

    @property
    def cout(self):
        return self.weight.shape[0]

    @property
    def cin(self):
        return self.weight.shape[1]

    @property
    def kk(self):
        return self.weight.shape[2] * self.weight.shape[3]

    def macs(self, r=None) -> int:
        if r is None:
            return self.cout * self.cin * self.kk * self.out_hw
        return self.cin * r * self.in_hw + r * self.cout * self.kk * self.out_hw

    def error(self, r) -> float:
        """Relative Frobenius error of the rank-r approximation (on the data when whitened)."""
        if getattr(self, "_tail", None) is None:
            energy = self.s.astype(np.float64) ** 2
            # tail[r] = energy discarded at rank r; computed once, the budget search asks thousands of times.
            self._tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
        total = self._tail[0]
        return math.sqrt(self._tail[r] / total) if total > 0 else 0.0

    def max_useful_rank(self) -> int:
        return min(len(self.s), self.cin)

    def min_rank(self) -> int:
        """The floor below which a factorisation is never chosen automatically: RANK_FLOOR channels, or
        1/16 of the input channels if more, capped at what the layer has. A layer with at most RANK_FLOOR
        inputs (a 3-channel RGB stem) keeps its full rank, where the pair saves nothing: it is never cut to
        rank 1. Between the two (9 to 31 input channels, the thin layers of small models such as the
        digits CNN's 16-channel one) the floor is a quarter of the inputs: RANK_FLOOR there would be half
        of them or more, and leave such a model nothing to cut."""
        if self.cin <= RANK_FLOOR:
            return self.max_useful_rank()
        return min(self.max_useful_rank(), max(min(RANK_FLOOR, math.ceil(self.cin / 4)), math.ceil(self.cin / 16)))


class BottleneckPass(GraphPass):
    name = "bottleneck"
    exact = False

    def __init__(self, mode: str, value: float, layers: list[str] | None = None, calibration=None,
                 input_shape=None, budget=None, budget_share: float = 1.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserInputError(f"unknown bottleneck mode {mode!r}: use rank=N, ratio=F, energy=F, macs=F or time=F")
        self.mode, self.value, self.layers = mode, value, layers
        self.calibration = calibration
        # {input name: shape}, or one shape for a single-input model; the pipeline fills it in.
        self.input_shapes = input_shape
        self.chosen: dict[str, dict] = {}
        # The pipeline's AccuracyBudget (None: no budget) and the share of it this pass may spend; judged on
        # the pipeline's validation set, filled in by run_pipeline.
        self.budget, self.budget_share = budget, budget_share
        self.validation = None
        self.raised = 0  # the raise step the budget needed (0: the ranks as the spec chose them)

    @classmethod
    def from_spec(cls, spec: str, layers=None, calibration=None, budget=None,
                  budget_share: float = 1.0) -> "BottleneckPass":
        key, _, raw = spec.partition("=")
        key = key.strip()
        try:
            value = float(raw)
        except ValueError:
            raise UserInputError(f"bad --bottleneck {spec!r}: use rank=16, ratio=0.25, energy=0.95, macs=0.5 "
                                 "or time=0.5") from None
        if key not in MODES:
            raise UserInputError(f"bad --bottleneck {spec!r}: use rank=16, ratio=0.25, energy=0.95, macs=0.5 "
                                 "or time=0.5")
        if not math.isfinite(value):
            raise UserInputError(f"bad --bottleneck {spec!r}: the value must be a finite number")
        if key == "rank" and (value < 1 or value != int(value)):
            raise UserInputError(f"bad --bottleneck {spec!r}: rank must be a positive integer")
        if key in ("ratio", "energy", "macs", "time") and not 0 < value <= 1:
            raise UserInputError(f"bad --bottleneck {spec!r}: {key} must be in (0, 1]")
        return cls(key, value, layers, calibration, budget=budget, budget_share=budget_share)

    # ------------------------------------------------------------------------------------------
    def rewrite(self, model: ir.Model) -> bool:
        layers = self._candidates(model)
        if self.layers:
            missing = set(self.layers) - {l.node.name for l in layers}
            if missing:
                raise UserInputError(f"--bottleneck-layers: no plain Conv, Gemm or MatMul with a constant weight "
                                     f"named {', '.join(sorted(missing))}; "
                                     "run 'deploykit inspect' for the names")
        if not layers:
            self.note("no convolution to factorise")
            return False
        if self.calibration is not None:
            self._whiten(model, layers)
        for layer in layers:
            m = layer.weight.transpose(0, 2, 3, 1).reshape(layer.cout * layer.kk, layer.cin).astype(np.float64)
            if layer.whiten_inv is not None:
                m = m @ layer.whiten
            layer.u, layer.s, layer.vt = np.linalg.svd(m, full_matrices=False)
        ranks = self._choose_ranks(layers, model)
        if self.budget is not None:
            ranks = self._hold_budget(model, layers, ranks)
        changed = 0
        for layer in layers:
            r = ranks.get(layer.node.name)
            if r is None:
                continue
            if layer.macs(r) >= layer.macs():
                self.note(f"left {layer.node.name}: at rank {r} the pair costs {layer.macs(r):,} MACs, "
                          f"not fewer than {layer.macs():,}")
                continue
            self._replace(layer, r)
            self.chosen[layer.node.name] = {"rank": r, "macs_before": layer.macs(), "macs_after": layer.macs(r),
                                            "weight_error": layer.error(r)}
            shape = (f"fully-connected {layer.cin}->{layer.cout} -> {layer.cin}->{r}->{layer.cout}"
                     if layer.kind != "conv" else
                     f"{layer.cin}->{layer.cout} {int(math.sqrt(layer.kk))}x{int(math.sqrt(layer.kk))} -> 1x1 "
                     f"{layer.cin}->{r} + {layer.cout}")
            self.note(f"{layer.node.name}: {shape}; MACs {layer.macs():,} -> {layer.macs(r):,}; relative weight "
                      f"error {layer.error(r):.3f}")
            changed += 1
        if changed:
            self.note(f"factorised {changed} layer(s)" + (" on calibration activations"
                                                              if self.calibration is not None else ""))
        return changed > 0

    def _hold_budget(self, model: ir.Model, layers: list[_Layer], ranks: dict[str, int]) -> dict[str, int]:
        """The chosen ranks, raised as little as holds the budget on the validation set (module docstring)."""
        from ..errors import VerificationError
        from ..validation import AccuracyJudge

        source = ir.to_proto(model)
        judge = AccuracyJudge.for_budget(source, self.validation, self.budget)
        if judge is None:
            self.note("no accuracy budget: the first output has no class axis to measure top-1 agreement on")
            return ranks
        allowance = self.budget.left * self.budget_share
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

    def _candidates(self, model: ir.Model) -> list[_Layer]:
        from ..inspect import inspect_model

        report = inspect_model(ir.to_proto(model), self.input_shapes)
        self._total_macs = report.totals.macs
        out_shapes = {l.name: l.output_shape for l in report.layers}
        layers, grouped, skipped_pointwise = [], [], 0
        for node in model.graph:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            if self.layers and node.name not in self.layers:
                continue
            if node.op_type != "Conv":
                fc = _fully_connected(node, out_shapes, report.input_shapes)
                if fc is None:
                    continue
                if self.mode not in MEASURED_MODES and not (self.layers and node.name in self.layers):
                    skipped_pointwise += 1  # like a 1x1 conv: split in two it pays only where timed (or named)
                    continue
                layers.append(fc)
                continue
            w = const(node.inputs[1])
            if w is None or w.ndim != 4:
                continue
            if attr(node, "group", 1) != 1:
                grouped.append(node.name)
                continue
            producer = node.inputs[0].producer()
            in_shape = out_shapes.get(producer.name) if producer is not None else report.input_shapes.get(node.inputs[0].name)
            out_shape = out_shapes.get(node.name)
            if not in_shape or not out_shape:
                continue
            spec = _timing_spec(node, w, in_shape)
            if w.shape[2] * w.shape[3] == 1 and not (self.layers and node.name in self.layers):
                # A 1x1 conv split into two thin 1x1 convs often runs slower than its MAC count says
                # (ResNet-50 at macs=0.5 with every 1x1 a candidate: 0.74 of the MAC cut). Unnamed, one is
                # a candidate only under a measured budget, which takes a rank only where its timing pays.
                if self.mode not in MEASURED_MODES or spec is None or spec["stride"] != 1 or any(spec["pads"]):
                    skipped_pointwise += 1
                    continue
            layers.append(_Layer(node, w, in_shape[2] * in_shape[3], out_shape[2] * out_shape[3], spec=spec))
        if skipped_pointwise and self.mode in MEASURED_MODES:
            self.note(f"left {skipped_pointwise} strided or padded 1x1 convolution(s) as they are: the timings cover "
                      "1x1 layers at stride 1 without padding (name one in --bottleneck-layers to factorise it)")
        elif skipped_pointwise:
            self.note(f"left {skipped_pointwise} 1x1 convolution(s) and fully-connected layer(s) as they are: split in "
                      "two they often run slower than their MACs say, so only macs= and time=, which time them, or "
                      "--bottleneck-layers take them")
        if grouped:
            # A grouped conv already has 1/groups of a dense conv's weights per output; its per-group
            # matrices are small, and a depthwise one (Cin/groups = 1) has no rank to cut.
            self.note(f"left {len(grouped)} grouped/depthwise convolution(s) as they are: only dense convolutions "
                      "are factorised")
        return layers

    def _choose_ranks(self, layers: list[_Layer], model: ir.Model) -> dict[str, int]:
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

    def _time_layers(self, layers: list[_Layer]) -> None:
        """Each candidate and its pair at GRID_POINTS ranks, timed at its shapes (or read from the cache)."""
        from ._conv_timing import ConvTimer

        from ..machine import cpu_flags

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

    def _time_budget(self, layers: list[_Layer], model: ir.Model) -> dict[str, int]:
        """time=F: the model's measured batch-1 latency cut to F, spending measured time, not MACs.

        The layer timings predict the cut; each prediction is then checked by timing the factorised model
        beside the model as it is (interleaved, so the machine's drift falls on both), and the target the
        allocation aims at is corrected by what was measured, at most TIME_CHECKS times."""
        source = ir.to_proto(model)
        timed = [l for l in layers if l.t_grid]
        with _Timer(model, self.input_shapes) as timer:
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
        trail = ", ".join(f"{c[2]:.2f} -> {c[1]:.2f}" for c in checks)
        self.note(f"time budget: {total * 1e3:.3g} ms at batch 1 measured here; the chosen ranks run in "
                  f"{measured:.2f} of it, timed beside the model as it is ({len(checks)} check(s), predicted -> "
                  f"measured: {trail})")
        return ranks

    def _factorised(self, source, layers: list[_Layer], ranks: dict[str, int]) -> ir.Model:
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

    def _budget(self, layers: list[_Layer], model: ir.Model) -> dict[str, int]:
        """macs=F: the model's MACs cut to F, at the timed ranks (multiples of the CPU's channel block)."""
        total = self._total_macs
        target = self.value * total
        others = total - sum(l.macs() for l in layers)
        macs = lambda l, r: l.macs(r)  # noqa: E731
        # Ranks whose time pays first; where those cannot reach F, KxK layers are taken on MACs alone.
        choice, cost = self._allocate(layers, others, target, macs, allowed=lambda l, r: _pays(l, r, True))
        if cost > target:
            choice, cost = self._allocate(layers, others, target, macs, allowed=_pays)
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

    def _replace(self, layer: _Layer, r: int) -> None:
        node, graph = layer.node, layer.node.graph
        a = layer.vt[:r]  # (r, Cin)
        if layer.whiten_inv is not None:
            a = a @ layer.whiten_inv
        b = layer.u[:, :r] * layer.s[:r]  # (Cout*K*K, r)
        if layer.kind != "conv":
            self._replace_fully_connected(layer, r, a, b)
            return
        kh, kw = layer.weight.shape[2:]
        dtype = layer.weight.dtype
        a_val = add_initializer(graph, f"{node.name}_reduce_weight", a.reshape(r, layer.cin, 1, 1).astype(dtype))
        b_val = add_initializer(graph, f"{node.name}_expand_weight",
                                b.reshape(layer.cout, kh, kw, r).transpose(0, 3, 1, 2).astype(dtype))
        reduce = ir.node("Conv", [node.inputs[0], a_val], {"kernel_shape": [1, 1], "strides": [1, 1],
                                                           "pads": [0, 0, 0, 0]}, name=f"{node.name}_reduce")
        attrs = {a_.name: a_.value for a_ in node.attributes.values()}
        attrs["kernel_shape"] = [kh, kw]
        inputs = [reduce.outputs[0], b_val] + ([node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] is not None else [])
        expand = ir.node("Conv", inputs, attrs, name=f"{node.name}_expand")
        graph.insert_before(node, [reduce, expand])
        replace_value(node.outputs[0], expand.outputs[0])
        graph.remove(node, safe=True)

    def _replace_fully_connected(self, layer: _Layer, r: int, a: np.ndarray, b: np.ndarray) -> None:
        """W (Cout x Cin) ~= B A: X -> X A^T (r wide) -> (X A^T) B^T, keeping Gemm's bias, alpha and beta on the
        second product, where they apply to the whole of X W^T."""
        node, graph = layer.node, layer.node.graph
        dtype = layer.weight.dtype
        if layer.kind == "gemm":
            a_val = add_initializer(graph, f"{node.name}_reduce_weight", a.astype(dtype))  # (r, Cin), transB=1
            b_val = add_initializer(graph, f"{node.name}_expand_weight", b.astype(dtype))  # (Cout, r), transB=1
            reduce = ir.node("Gemm", [node.inputs[0], a_val], {"transB": 1}, name=f"{node.name}_reduce")
            attrs = {k: v.value for k, v in node.attributes.items() if k in ("alpha", "beta")}
            bias = [node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] is not None else []
            expand = ir.node("Gemm", [reduce.outputs[0], b_val, *bias], {**attrs, "transB": 1},
                             name=f"{node.name}_expand")
        else:
            a_val = add_initializer(graph, f"{node.name}_reduce_weight", np.ascontiguousarray(a.T).astype(dtype))
            b_val = add_initializer(graph, f"{node.name}_expand_weight", np.ascontiguousarray(b.T).astype(dtype))
            reduce = ir.node("MatMul", [node.inputs[0], a_val], name=f"{node.name}_reduce")
            expand = ir.node("MatMul", [reduce.outputs[0], b_val], name=f"{node.name}_expand")
        graph.insert_before(node, [reduce, expand])
        replace_value(node.outputs[0], expand.outputs[0])
        graph.remove(node, safe=True)

    def _whiten(self, model: ir.Model, layers: list[_Layer]) -> None:
        """C^(1/2) and C^(-1/2) of each layer's input channels, from calibration activations."""
        from ..calibration import load_calibration, layer_inputs

        data = load_calibration(self.calibration, model)
        acts = layer_inputs(model, [l.node.inputs[0].name for l in layers], data)
        unfitted = 0
        for l in layers:
            x = acts[l.node.inputs[0].name]  # (N, Cin, H, W), or (..., Cin) into a fully-connected layer
            flat = (x.transpose(1, 0, 2, 3).reshape(l.cin, -1) if l.kind == "conv" else x.reshape(-1, l.cin).T)
            if flat.shape[1] < l.cin:
                # Fewer input vectors than channels (an FC layer after a Flatten sees one per sample: VGG-16's
                # first has 25,088 inputs): the covariance is singular, says nothing about most directions,
                # and at that width would take 5 GB a matrix. Such a layer is fitted on its weights alone.
                unfitted += 1
                continue
            flat = flat.astype(np.float64)
            cov = flat @ flat.T / flat.shape[1]
            evals, evecs = np.linalg.eigh(cov)
            evals = np.maximum(evals, 1e-6 * max(float(evals.max()), 1e-12))
            l.whiten = (evecs * np.sqrt(evals)) @ evecs.T
            l.whiten_inv = (evecs / np.sqrt(evals)) @ evecs.T
        if unfitted:
            self.note(f"fitted {unfitted} layer(s) on their weights alone: the calibration data gives them fewer "
                      "input vectors than they have input channels")


def _pays(layer: _Layer, r: int, every_layer: bool = False) -> bool:
    """Under macs=: whether rank r saves at least PAYOFF of the layer's time for each share of its MACs it
    saves, by the timings. Required of 1x1 layers (a split into two thin 1x1s often does not pay) and,
    with `every_layer`, of KxK ones too; a layer outside the timing model (auto_pad, non-square) is
    taken on its MACs if it is KxK, never if it is 1x1."""
    if layer.kk > 1 and not (every_layer and layer.t_grid):
        return True
    t = layer.time(r) if layer.t_grid else None
    return t is not None and layer.t_full - t >= PAYOFF * layer.t_full * (1 - layer.macs(r) / layer.macs())


def _fully_connected(node: ir.Node, out_shapes: dict, graph_input_shapes: dict) -> _Layer | None:
    """A Gemm (X W^T or X B, transA=0) or MatMul (X B, X of any rank) with a constant 2-D weight, as a _Layer;
    None for any other product (two activations, a transposed X, a batched weight)."""
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        return None
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return None
        weight = w if attr(node, "transB", 0) else w.T  # (Cout, Cin)
        kind = "gemm"
    else:
        weight, kind = w.T, "matmul"
    producer = node.inputs[0].producer()
    in_shape = out_shapes.get(producer.name) if producer is not None else graph_input_shapes.get(node.inputs[0].name)
    if not in_shape or len(in_shape) < 2 or in_shape[-1] != weight.shape[1]:
        return None
    rows = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1  # per sample: batch 1, as the timings are
    spec = {"op": "gemm", "cin": int(weight.shape[1]), "cout": int(weight.shape[0]), "rows": rows}
    return _Layer(node, np.ascontiguousarray(weight)[:, :, None, None], rows, rows, spec=spec, kind=kind)


def _timing_spec(node: ir.Node, weight: np.ndarray, in_shape) -> dict | None:
    """What a layer's timing depends on; None where the timing model does not apply (auto_pad, non-square)."""
    kh, kw = weight.shape[2:]
    strides = ints(node, "strides", [1, 1])
    dilations = ints(node, "dilations", [1, 1])
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or kh != kw or len(set(strides)) != 1 \
            or len(set(dilations)) != 1 or len(in_shape) != 4:
        return None
    return {"cin": int(weight.shape[1]), "cout": int(weight.shape[0]), "k": int(kh), "stride": int(strides[0]),
            "dilation": int(dilations[0]), "pads": [int(p) for p in ints(node, "pads", [0, 0, 0, 0])],
            "h": int(in_shape[2]), "w": int(in_shape[3])}


class _Timer:
    """Batch-1 latency of whole models in ONNX Runtime, and the ratio of a candidate's to the source's: the
    two timed by deploykit.timing, one fresh process per model per round, taking turns round by round.

    Why fresh processes with spin-waiting on, as bench and Engine run: the same ResNet-18 check read 0.33
    of the source in a process that had just exported with torch and 0.53 in one that had not (0.51 in
    separate processes); two sessions in one process interfere (with spinning on, the idle one's threads
    spin into the other's runs: ResNet-50 read 0.50 that way, 0.32 alone); and with spinning off the
    check no longer times what bench and Engine run (spinning favours a factorised model's many small
    kernels: ResNet-50's time=0.5 checked at 0.50 that way and ran 2.34x faster in bench)."""

    ROUNDS = 5
    ROUND_SECONDS = 0.15  # and at least 3 runs per model per round

    def __init__(self, source, input_shapes):
        import tempfile

        import onnx

        from ..signature import read_signature, sample_inputs

        self._tmp = tempfile.TemporaryDirectory(prefix="deploykit-time-")
        self._count = 0
        self._source = self._save(source)
        signature = read_signature(onnx.load(str(self._source), load_external_data=False))
        shapes = signature.resolve(input_shapes if isinstance(input_shapes, dict) else
                                   ({signature.input_names[0]: input_shapes} if input_shapes else None))
        feeds = sample_inputs(signature, {n: (1, *shape[1:]) for n, shape in shapes.items()})
        self._feeds = Path(self._tmp.name) / "feeds.npz"
        np.savez(self._feeds, **feeds)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()

    def _save(self, model: ir.Model) -> Path:
        path = Path(self._tmp.name) / f"m{self._count}.onnx"
        self._count += 1
        ir.save(model, path, external_data=f"{path.name}.data", size_threshold_bytes=1024)
        return path

    def _medians(self, paths) -> list[float]:
        from ..errors import DeploykitError
        from ..timing import interleaved, median, time_in_fresh_process

        try:
            samples = interleaved(dict(enumerate(paths)), self.ROUNDS, lambda path: time_in_fresh_process(
                path, feeds=self._feeds, seconds=self.ROUND_SECONDS, runs=3))
        except DeploykitError as exc:
            raise DeploykitError(f"--bottleneck time=: {exc}") from exc
        return [median(samples[i]) for i in range(len(paths))]

    def seconds(self) -> float:
        """The source's median latency."""
        return self._medians([self._source])[0]

    def ratio(self, candidate) -> float:
        """The candidate's median latency over the source's, the two timed round by round."""
        source, trial = self._medians([self._source, self._save(candidate)])
        return trial / source
