"""A layer as the factorisation sees it: its weight matrix, the MACs and error of each rank, and its timings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..graph_tools import attr, const, ints


MODES = ("rank", "ratio", "energy", "macs", "time")
MEASURED_MODES = ("macs", "time")  # the modes that time each candidate and choose among the timed ranks
PAYOFF = 0.9  # under macs=, a rank pays when its share of time saved is at least this times its share of MACs saved
RANK_FLOOR = 8
RAISED_KEEP = 0.9  # a raised rank is kept only while its pair costs at most this share of the layer's MACs
RAISE_STEPS = 8  # rank raises tried under an accuracy budget: step k moves every rank k/8 of the way to break-even
GRID_POINTS = 12  # at most this many ranks timed per layer, between its floor and its break-even rank
TIME_CHECKS = 3  # time=F: factorised models timed beside the source to correct the layer timings' prediction
TIME_TOLERANCE = 0.05  # ... stopping once one lands within this share of F
# time=F under an accuracy budget: the raised ranks may run at most this much (a share of the source's latency)
# slower than the ranks as chosen, or than F where those ran faster, before the time budget counts as missed;
# one whole-model timing moves by about that much from run to run on a 2-core machine.
RAISED_TIME_SLACK = 0.1


@dataclass
class Layer:
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


def pays(layer: Layer, r: int, every_layer: bool = False) -> bool:
    """Under macs=: whether rank r saves at least PAYOFF of the layer's time for each share of its MACs it
    saves, by the timings. Required of 1x1 layers (a split into two thin 1x1s often does not pay) and,
    with `every_layer`, of KxK ones too; a layer outside the timing model (auto_pad, non-square) is
    taken on its MACs if it is KxK, never if it is 1x1."""
    if layer.kk > 1 and not (every_layer and layer.t_grid):
        return True
    t = layer.time(r) if layer.t_grid else None
    return t is not None and layer.t_full - t >= PAYOFF * layer.t_full * (1 - layer.macs(r) / layer.macs())


def fully_connected(node: ir.Node, out_shapes: dict, graph_input_shapes: dict) -> Layer | None:
    """A Gemm (X W^T or X B, transA=0) or MatMul (X B, X of any rank) with a constant 2-D weight, as a Layer;
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
    return Layer(node, np.ascontiguousarray(weight)[:, :, None, None], rows, rows, spec=spec, kind=kind)


def timing_spec(node: ir.Node, weight: np.ndarray, in_shape) -> dict | None:
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
