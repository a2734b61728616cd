"""Insert low-rank 1x1 bottlenecks: a KxK Conv (Cin -> Cout) becomes 1x1 (Cin -> r) then KxK (r -> Cout).

(cs231n / GoogLeNet's 1x1 reductions.) Write the weight as a matrix M of shape (Cout*K*K, Cin): row
(o, i, j) holds the weights that output channel o applies at kernel offset (i, j) to every input
channel. A 1x1 conv to r channels followed by a KxK conv computes exactly the KxK conv with weight
M' = B A, for A (r x Cin) and B (Cout*K*K x r). The truncated SVD M ~= U_r S_r V_r^T is the best
rank-r choice (Eckart-Young), so A = V_r^T and B = U_r S_r. Zero padding commutes with the 1x1
conv (it has no bias), so the pair equals the rank-r convolution exactly.

MACs: Cout*Cin*K*K*Ho*Wo before; Cin*r*Hi*Wi + r*Cout*K*K*Ho*Wo after. A layer is only replaced
when that is fewer, and only KxK layers with K > 1 are considered unless named explicitly: a 1x1
conv split into two thin 1x1 convs runs slower than its MACs say (measured in bench/). The rank comes from the spec: rank=N, ratio=F (of Cin), energy=E (kept share
of the squared singular values), macs=F (the whole model's MACs cut to F of what they were,
spending rank where it costs the least error) or time=F (its measured batch-1 latency cut to F).

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
allocation spends the measured time rather than MACs.

With calibration data the factorisation is data-aware: it minimises the error on the layer's
actual inputs, ||(M - M') X||, rather than on the weights alone. With C = E[x x^T] the per-pixel
channel covariance of the layer's input, the best M' is U_r S_r V_r^T C^(-1/2) where
U S V^T = M C^(1/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import UserInputError
from ._graph import add_initializer, attr, const, ints, replace_value
from .base import GraphPass

MODES = ("rank", "ratio", "energy", "macs", "time")
RANK_FLOOR = 8
RAISE_STEPS = 8  # rank raises tried under an accuracy budget: step k moves every rank k/8 of the way to break-even
GRID_POINTS = 12  # at most this many ranks timed per layer, between its floor and its break-even rank


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
        1/16 of the input channels if more, capped at what the layer has. A 3-channel RGB stem's floor
        is its full rank, where the pair saves nothing: it is never cut to rank 1."""
        return min(self.max_useful_rank(), max(RANK_FLOOR, math.ceil(self.cin / 16)))


class UnreachableBudget(UserInputError):
    """A macs=/time= budget the dense KxK layers cannot reach; `reachable` is the nearest spec that can be."""

    def __init__(self, message: str, reachable: str):
        super().__init__(message)
        self.reachable = reachable


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
                raise UserInputError(f"--bottleneck-layers: no plain Conv named {', '.join(sorted(missing))}; "
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
            self.note(f"{layer.node.name}: {layer.cin}->{layer.cout} {int(math.sqrt(layer.kk))}x"
                      f"{int(math.sqrt(layer.kk))} -> 1x1 {layer.cin}->{r} + {layer.cout}; MACs "
                      f"{layer.macs():,} -> {layer.macs(r):,}; relative weight error {layer.error(r):.3f}")
            changed += 1
        if changed:
            self.note(f"factorised {changed} convolution(s)" + (" on calibration activations"
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
                top = by_name[name].break_even_rank()
                if step < RAISE_STEPS and r < top:
                    out[name] = math.ceil(r + (top - r) * step / RAISE_STEPS)
            return out

        def drop_at(step: int) -> float:
            trial = ir.from_proto(source)
            nodes = {n.name: n for n in trial.graph}
            originals = [l.node for l in layers]
            try:
                for name, r in raised(step).items():
                    if by_name[name].macs(r) >= by_name[name].macs():
                        continue  # left as it is by rewrite() too
                    by_name[name].node = nodes[name]
                    self._replace(by_name[name], r)
                return judge.drop_of(ir.to_proto(trial))
            finally:
                for l, node in zip(layers, originals):
                    l.node = node

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
        layers, grouped = [], []
        for node in model.graph:
            if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
                continue
            if self.layers and node.name not in self.layers:
                continue
            w = const(node.inputs[1])
            if w is None or w.ndim != 4:
                continue
            if attr(node, "group", 1) != 1:
                grouped.append(node.name)
                continue
            if w.shape[2] * w.shape[3] == 1 and not (self.layers and node.name in self.layers):
                # A 1x1 conv split into two thin 1x1 convs runs slower than its MAC count says
                # (ResNet-50 at macs=0.5: 0.74 of the MAC cut with them, 0.95 without): only when named.
                continue
            producer = node.inputs[0].producer()
            in_shape = out_shapes.get(producer.name) if producer is not None else report.input_shapes.get(node.inputs[0].name)
            out_shape = out_shapes.get(node.name)
            if not in_shape or not out_shape:
                continue
            layers.append(_Layer(node, w, in_shape[2] * in_shape[3], out_shape[2] * out_shape[3],
                                 spec=_timing_spec(node, w, in_shape)))
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
        self.note(f"timed {timed} convolution(s) and their pairs at their shapes in ONNX Runtime on this machine "
                  f"({timer.measured} measured now, the rest from the cache)")

    def _time_budget(self, layers: list[_Layer], model: ir.Model) -> dict[str, int]:
        """time=F: the model's measured batch-1 latency cut to F, spending measured time, not MACs."""
        total = self._model_seconds(model)
        timed = [l for l in layers if l.t_grid]
        others = max(0.0, total - sum(l.t_full for l in timed))
        choice, cost = self._allocate(timed, others, self.value * total, lambda l, r: l.time(r))
        if cost > self.value * total:
            reachable = f"time={min(1.0, math.ceil((cost / total + 0.03) * 100) / 100):g}"
            raise UnreachableBudget(
                f"--bottleneck time={self.value:g} cannot be reached: factorising the dense KxK convolutions down to "
                f"their rank floor leaves {cost / total:.2f} of the measured time ({total * 1e3:.3g} ms at batch 1); "
                f"ask for {reachable} or more (a margin for the run-to-run noise of the measured latency)", reachable)
        self.note(f"time budget: {total * 1e3:.3g} ms at batch 1 measured here; the chosen ranks are predicted to "
                  f"take {cost / total:.2f} of it (from the layer timings; the rest of the model as measured)")
        return {k: v for k, v in choice.items() if v is not None}

    def _model_seconds(self, model: ir.Model) -> float:
        """Median batch-1 latency of the model as it is now, in ONNX Runtime at level ALL."""
        import tempfile
        import time
        from pathlib import Path

        import onnx

        from ..signature import read_signature, sample_inputs
        from ..verify import cpu_session

        with tempfile.TemporaryDirectory(prefix="deploykit-time-") as tmp:
            path = Path(tmp) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data", size_threshold_bytes=1024)
            signature = read_signature(onnx.load(str(path), load_external_data=False))
            shapes = signature.resolve(self.input_shapes if isinstance(self.input_shapes, dict) else
                                       ({signature.input_names[0]: self.input_shapes} if self.input_shapes else None))
            feeds = sample_inputs(signature, {n: (1, *shape[1:]) for n, shape in shapes.items()})
            session = cpu_session(str(path))
            for _ in range(3):
                session.run(None, feeds)
            times, start = [], time.perf_counter()
            while len(times) < 7 or time.perf_counter() - start < 0.5:
                t = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - t)
        times.sort()
        return times[len(times) // 2]

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
        choice, cost = self._allocate(layers, others, target, lambda l, r: l.macs(r))
        if cost > target:
            reachable = f"macs={math.ceil(cost / total * 100) / 100:g}"
            raise UnreachableBudget(
                f"--bottleneck macs={self.value:g} cannot be reached: factorising the dense KxK convolutions down to "
                f"their rank floor (at least {RANK_FLOOR} channels) leaves {cost / total:.2f} of the MACs; ask for "
                f"{reachable} or more, or name 1x1 layers in --bottleneck-layers", reachable)
        return {k: v for k, v in choice.items() if v is not None}

    def _replace(self, layer: _Layer, r: int) -> None:
        node, graph = layer.node, layer.node.graph
        a = layer.vt[:r]  # (r, Cin)
        if layer.whiten_inv is not None:
            a = a @ layer.whiten_inv
        b = layer.u[:, :r] * layer.s[:r]  # (Cout*K*K, r)
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

    def _whiten(self, model: ir.Model, layers: list[_Layer]) -> None:
        """C^(1/2) and C^(-1/2) of each layer's input channels, from calibration activations."""
        from ..calibration import load_calibration, layer_inputs

        data = load_calibration(self.calibration, model)
        acts = layer_inputs(model, [l.node.inputs[0].name for l in layers], data)
        for l in layers:
            x = acts[l.node.inputs[0].name]  # (N, Cin, H, W)
            flat = x.transpose(1, 0, 2, 3).reshape(l.cin, -1).astype(np.float64)
            cov = flat @ flat.T / flat.shape[1]
            evals, evecs = np.linalg.eigh(cov)
            evals = np.maximum(evals, 1e-6 * max(float(evals.max()), 1e-12))
            l.whiten = (evecs * np.sqrt(evals)) @ evecs.T
            l.whiten_inv = (evecs / np.sqrt(evals)) @ evecs.T


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
