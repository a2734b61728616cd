"""The timings the bottleneck's choices rest on: convolutions at their real shapes (ConvTimer, cached per
machine), and whole models, a candidate beside its source, in fresh processes (ModelTimer).

The bottleneck pass asks what a KxK convolution costs and what its 1x1-reduce + KxK pair costs at
a given rank, and the same of a fully-connected layer (a Gemm, spec "op": "gemm") and its two thin
products. MACs answer only roughly: thin convolutions run below the machine's efficiency, so a
pair with half the MACs can take more than half the time. Each answer here is a tiny one- or
two-node model timed in ONNX Runtime (level ALL, batch 1), measured once per machine and shape and
kept in the cache directory, keyed by the CPU, its vector extensions, ONNX Runtime's version and
the thread count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_RUNS_SECONDS = 0.1  # timed runs per measurement, at least _MIN_RUNS of them
_MIN_RUNS = 10


def machine_key(threads: int | None) -> str:
    import onnxruntime as ort

    from .machine import cpu_flags, cpu_model

    return json.dumps([cpu_model(), sorted(cpu_flags()), ort.__version__, threads])


class ConvTimer:
    """conv(shape) and pair(shape, r): median seconds of one batch-1 run, from the cache or measured."""

    def __init__(self, threads: int | None = None, cache_file: Path | None = None):
        from .backends.base import cache_dir

        self.threads = threads
        self.path = cache_file or cache_dir() / "conv-timings.json"
        self.machine = machine_key(threads)
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            stored = {}
        self.all = stored if isinstance(stored, dict) else {}
        self.timings = self.all.setdefault(self.machine, {})
        self.measured = 0

    def conv(self, spec: dict) -> float:
        return self._time(spec, None)

    def pair(self, spec: dict, rank: int) -> float:
        return self._time(spec, rank)

    def save(self) -> None:
        if not self.measured:
            return
        from .storage import atomic_path

        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.all))
        except OSError:
            pass  # a read-only cache only costs the next run its measurements

    def _time(self, spec: dict, rank: int | None) -> float:
        key = json.dumps([spec, rank], sort_keys=True)
        if key not in self.timings:
            self.timings[key] = self._measure(spec, rank)
            self.measured += 1
        return self.timings[key]

    def _measure(self, spec: dict, rank: int | None) -> float:
        from .ort_session import new_session
        from .timing import latencies, median

        session = new_session(_conv_model(spec, rank), threads=self.threads)
        feeds = {"x": np.random.default_rng(0).standard_normal(_input_shape(spec)).astype(np.float32)}
        return median(latencies(lambda: session.run(None, feeds), runs=_MIN_RUNS, seconds=_RUNS_SECONDS))


def _input_shape(spec: dict) -> tuple[int, ...]:
    return (spec["rows"], spec["cin"]) if spec.get("op") == "gemm" else (1, spec["cin"], spec["h"], spec["w"])


def _gemm_nodes(spec: dict, rank: int | None, rng) -> tuple[list, list]:
    """x (rows, cin) -> Gemm (cin -> cout), or -> Gemm (cin -> rank) -> Gemm (rank -> cout), weights as
    (out, in) with transB=1 as torch exports Linear."""
    from onnx import helper, numpy_helper

    inits, nodes, source = [], [], "x"
    if rank is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal((rank, spec["cin"])).astype(np.float32), "a"))
        nodes.append(helper.make_node("Gemm", ["x", "a"], ["reduced"], transB=1))
        source = "reduced"
    width = rank if rank is not None else spec["cin"]
    inits += [numpy_helper.from_array(rng.standard_normal((spec["cout"], width)).astype(np.float32), "w"),
              numpy_helper.from_array(np.zeros(spec["cout"], np.float32), "b")]
    nodes.append(helper.make_node("Gemm", [source, "w", "b"], ["y"], transB=1))
    return inits, nodes


def _conv_nodes(spec: dict, rank: int | None, rng) -> tuple[list, list]:
    """x (1, cin, h, w) -> Conv KxK (cin -> cout), or -> Conv 1x1 (cin -> rank) -> Conv KxK (rank -> cout)."""
    from onnx import helper, numpy_helper

    k = spec["k"]
    attrs = {"kernel_shape": [k, k], "strides": [spec["stride"]] * 2, "pads": spec["pads"],
             "dilations": [spec["dilation"]] * 2}
    inits, nodes, source = [], [], "x"
    if rank is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal((rank, spec["cin"], 1, 1)).astype(np.float32), "a"))
        nodes.append(helper.make_node("Conv", ["x", "a"], ["reduced"], kernel_shape=[1, 1]))
        source = "reduced"
    width = rank if rank is not None else spec["cin"]
    inits += [numpy_helper.from_array(rng.standard_normal((spec["cout"], width, k, k)).astype(np.float32), "w"),
              numpy_helper.from_array(np.zeros(spec["cout"], np.float32), "b")]
    nodes.append(helper.make_node("Conv", [source, "w", "b"], ["y"], **attrs))
    return inits, nodes


def _conv_model(spec: dict, rank: int | None):
    """The layer (or its pair at `rank`) as a model: _conv_nodes or _gemm_nodes, followed by Relu, as the
    layers it stands for usually are (ORT fuses it)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits, nodes = (_gemm_nodes if spec.get("op") == "gemm" else _conv_nodes)(spec, rank, rng)
    nodes.append(helper.make_node("Relu", ["y"], ["out"]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(_input_shape(spec)))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


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

        from .signature import read_signature, sample_inputs

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

    def _save(self, model) -> Path:
        import onnx_ir as ir

        path = Path(self._tmp.name) / f"m{self._count}.onnx"
        self._count += 1
        ir.save(model, path, external_data=f"{path.name}.data", size_threshold_bytes=1024)
        return path

    def _medians(self, paths) -> list[float]:
        from .errors import DeploykitError
        from .timing import interleaved, median, time_in_fresh_process

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
