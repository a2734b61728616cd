"""Numerical comparison of a model's outputs against a reference.

Relative error is max|candidate - reference| / max|reference| over each output: an
element-wise ratio explodes on logits near zero and says nothing about the model. The scale is
floored at SCALE_FLOOR: a probability map that is all but zero on a random input (a text detector's
sigmoid on noise peaks at 1e-5) would otherwise turn float rounding into a "large" relative error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .ort_session import cpu_session, ort_max_opset, runtime_message, runtime_refusal  # noqa: F401  (callers' names)


SCALE_FLOOR = 1e-2


@dataclass
class Deviation:
    output: str
    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    reference_value: float
    candidate_value: float

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"output {self.output!r} at index {list(self.worst_index)}: "
                f"reference {self.reference_value:.6g}, got {self.candidate_value:.6g} "
                f"(max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g})")


def compare(names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[Deviation]:
    """One Deviation per output; shapes must agree. Differences are taken in float64, a slab of
    samples at a time, so comparing large outputs (64 detector maps) needs no float64 copy of them."""
    out = []
    for name, ref, got in zip(names, reference, candidate, strict=True):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            raise ValueError(f"output {name!r}: shape {got.shape} differs from reference {ref.shape}")
        if ref.size == 0:
            out.append(Deviation(name, 0.0, 0.0, (), 0.0, 0.0))
            continue
        flat_ref, flat_got = ref.reshape(-1), got.reshape(-1)
        best, best_at, peak = -1.0, 0, 0.0
        for start in range(0, flat_ref.size, _SLAB):
            r = flat_ref[start:start + _SLAB].astype(np.float64)
            diff = np.abs(flat_got[start:start + _SLAB].astype(np.float64) - r)
            diff = np.where(np.isnan(diff), np.inf, diff)
            i = int(np.argmax(diff))
            if diff[i] > best:
                best, best_at = float(diff[i]), start + i
            peak = max(peak, float(np.max(np.abs(r))))
        idx = np.unravel_index(best_at, ref.shape)
        max_rel = best / max(peak, SCALE_FLOOR)
        out.append(Deviation(name, best, max_rel, tuple(int(i) for i in idx), float(ref[idx]), float(got[idx])))
    return out


_SLAB = 1 << 22  # elements compared at once: 32 MiB of float64 per operand


def worst(deviations: list[Deviation]) -> Deviation:
    return max(deviations, key=lambda d: d.max_rel)


def run_onnx_cpu(model_path: str, feeds: dict[str, np.ndarray], optimization: str = "all") -> list[np.ndarray]:
    """Run a model once in a fresh ONNX Runtime CPU session."""
    from .runtime import Engine

    engine = Engine(model_path, providers="cpu", graph_optimization_level=optimization)
    return engine.run(feeds)
