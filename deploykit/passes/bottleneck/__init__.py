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
Under time=F the raised ranks are timed again, and refused where they miss F by more than
RAISED_TIME_SLACK: ranks raised near break-even can run slower than the layers left whole.

Thin convolutions run below the machine's efficiency, so MACs overstate what a cut buys, most of
all at ranks that are not a multiple of the CPU's channel block (16 with AVX-512, 8 with AVX2),
which ONNX Runtime's blocked layout packs. The budget modes therefore choose among multiples of the
block only, each candidate layer and its pair timed at those ranks at the layer's real shapes in
ONNX Runtime on this machine (deploykit.model_timing, cached per machine); under time=F the
allocation spends the measured time rather than MACs, and its prediction is checked by timing the
factorised model beside the source, the aim corrected by what was measured (at most TIME_CHECKS).

With calibration data the factorisation is data-aware: it minimises the error on the layer's
actual inputs, ||(M - M') X||, rather than on the weights alone. With C = E[x x^T] the per-pixel
channel covariance of the layer's input, the best M' is U_r S_r V_r^T C^(-1/2) where
U S V^T = M C^(1/2).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ...errors import UnreachableBudget, UserInputError  # noqa: F401  (UnreachableBudget: its old home)
from ..base import GraphPass
from .budget import BudgetHold
from .layers import MODES
from .ranks import RankChoice
from .rewrite import Rewrite


class BottleneckPass(RankChoice, BudgetHold, Rewrite, GraphPass):
    name = "bottleneck"
    exact = False

    @classmethod
    def from_options(cls, options, budget=None):
        if not options.bottleneck:
            return None
        # One budget for the whole pipeline: the bottleneck may spend half of it when int8 follows.
        return cls.from_spec(options.bottleneck, layers=list(options.bottleneck_layers or ()) or None,
                             calibration=options.calibration, budget=budget,
                             budget_share=0.5 if options.int8 else 1.0)

    def __init__(self, mode: str, value: float, layers: list[str] | None = None, calibration=None,
                 input_shape=None, budget=None, budget_share: float = 1.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserInputError(f"unknown bottleneck mode {mode!r}: use rank=N, ratio=F, energy=F, macs=F or time=F")
        self.mode, self.value, self.layers = mode, value, layers
        self.calibration = calibration
        # {input name: shape}, or one shape for a single-input model; else the pipeline's (PipelineContext).
        self.given_shapes = input_shape
        self.chosen: dict[str, dict] = {}
        # The pipeline's AccuracyBudget (None: no budget) and the share of it this pass may spend; judged on
        # the pipeline's validation set (its context).
        self.budget, self.budget_share = budget, budget_share
        self.raised = 0  # the raise step the budget needed (0: the ranks as the spec chose them)

    @property
    def input_shapes(self):
        return self.given_shapes if self.given_shapes is not None else self.context.input_shapes

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

