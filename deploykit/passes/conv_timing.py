"""Measured latency of convolutions at their real shapes in ONNX Runtime on this machine, cached.

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

    from ..machine import cpu_flags, cpu_model

    return json.dumps([cpu_model(), sorted(cpu_flags()), ort.__version__, threads])


class ConvTimer:
    """conv(shape) and pair(shape, r): median seconds of one batch-1 run, from the cache or measured."""

    def __init__(self, threads: int | None = None, cache_file: Path | None = None):
        from ..backends.base import cache_dir

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
        from ..storage import atomic_path

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
        from ..ort_session import new_session
        from ..timing import latencies, median

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
