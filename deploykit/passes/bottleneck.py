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
of the squared singular values) or macs=F (the whole model's MACs cut to F of what they were,
spending rank where it costs the least error).

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

MODES = ("rank", "ratio", "energy", "macs")
RANK_FLOOR = 8


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


class BottleneckPass(GraphPass):
    name = "bottleneck"
    exact = False

    def __init__(self, mode: str, value: float, layers: list[str] | None = None, calibration=None,
                 input_shape=None) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserInputError(f"unknown bottleneck mode {mode!r}: use rank=N, ratio=F, energy=F or macs=F")
        self.mode, self.value, self.layers = mode, value, layers
        self.calibration = calibration
        # {input name: shape}, or one shape for a single-input model; the pipeline fills it in.
        self.input_shapes = input_shape
        self.chosen: dict[str, dict] = {}

    @classmethod
    def from_spec(cls, spec: str, layers=None, calibration=None) -> "BottleneckPass":
        key, _, raw = spec.partition("=")
        key = key.strip()
        try:
            value = float(raw)
        except ValueError:
            raise UserInputError(f"bad --bottleneck {spec!r}: use rank=16, ratio=0.25, energy=0.95 or macs=0.5") from None
        if key not in MODES:
            raise UserInputError(f"bad --bottleneck {spec!r}: use rank=16, ratio=0.25, energy=0.95 or macs=0.5")
        if not math.isfinite(value):
            raise UserInputError(f"bad --bottleneck {spec!r}: the value must be a finite number")
        if key == "rank" and (value < 1 or value != int(value)):
            raise UserInputError(f"bad --bottleneck {spec!r}: rank must be a positive integer")
        if key in ("ratio", "energy", "macs") and not 0 < value <= 1:
            raise UserInputError(f"bad --bottleneck {spec!r}: {key} must be in (0, 1]")
        return cls(key, value, layers, calibration)

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
            layers.append(_Layer(node, w, in_shape[2] * in_shape[3], out_shape[2] * out_shape[3]))
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
        return self._budget(layers, model)

    def _budget(self, layers: list[_Layer], model: ir.Model) -> dict[str, int]:
        """Lagrangian allocation: each layer picks r minimising error(r)^2 * macs + lambda * macs(r)."""
        total = self._total_macs
        target = self.value * total
        others = total - sum(l.macs() for l in layers)

        def pick(lam):
            choice, cost = {}, others
            for l in layers:
                best_r, best = None, l.macs() * lam  # keeping the layer: no error, full MACs
                for r in range(l.min_rank(), l.max_useful_rank() + 1):
                    if l.macs(r) >= l.macs():
                        break
                    value = l.error(r) ** 2 * l.macs() + lam * l.macs(r)
                    if value < best:
                        best_r, best = r, value
                choice[l.node.name] = best_r
                cost += l.macs(best_r) if best_r else l.macs()
            return choice, cost

        lo, hi = 0.0, 1.0
        while pick(hi)[1] > target and hi < 1e12:
            hi *= 2
        choice, cost = pick(hi)
        if cost > target:
            raise UserInputError(
                f"--bottleneck macs={self.value:g} cannot be reached: factorising the dense KxK convolutions down to "
                f"their rank floor (at least {RANK_FLOOR} channels) leaves {cost / total:.2f} of the MACs; ask for "
                f"macs={math.ceil(cost / total * 100) / 100:g} or more, or name 1x1 layers in --bottleneck-layers")
        for _ in range(40):
            mid = (lo + hi) / 2
            c, cost = pick(mid)
            if cost <= target:
                hi, choice = mid, c
            else:
                lo = mid
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
