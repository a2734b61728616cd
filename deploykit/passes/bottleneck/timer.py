"""Batch-1 latency of whole models, the source beside a candidate, in fresh processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir


class ModelTimer:
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

        from ...signature import read_signature, sample_inputs

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
        from ...errors import DeploykitError
        from ...timing import interleaved, median, time_in_fresh_process

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
