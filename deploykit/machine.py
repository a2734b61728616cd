"""What machine a measurement ran on, and how fast it can multiply.

The fp32 ceiling is measured with ONNX Runtime's own MatMul (MLAS), at the thread count the
benchmarks use: numpy's BLAS can be built for, or set to, narrower vector units
(OPENBLAS_CORETYPE) and understates the machine by up to 2x.
"""

from __future__ import annotations

import os
import platform
import time

META_CPU = "deploykit.ort_layout.cpu_flags"
_RELEVANT = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni", "avx512_bf16", "avx2", "avx_vnni", "fma",
             "amx_tile", "amx_int8", "amx_bf16")
VNNI = {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}  # the extensions with an 8-bit dot product into 32 bits


def cpu_flags() -> set[str]:
    """The vector extensions of this CPU that ONNX Runtime's kernels choose between."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return {f for f in line.split(":", 1)[1].split() if f in _RELEVANT}
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": {}}
    for name in ("onnxruntime", "onnx", "numpy", "torch", "tensorrt", "openvino"):
        try:
            module = __import__(name)
            info["libraries"][name] = getattr(module, "__version__", "?")
        except Exception:
            continue
    info["gpu"] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:
        pass
    return info


def _matmul_model(size: int, quantized: bool):
    """C = A @ B with B a constant; quantized: both operands through QuantizeLinear/DequantizeLinear
    (uint8 activations, int8 weights), which ONNX Runtime and OpenVINO both run as an int8 MatMul."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((size, size)).astype(np.float32)
    inits, nodes, left, right = [], [], "a", "b"
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "sa"),
                  numpy_helper.from_array(np.array(128, np.uint8), "za"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "sb"),
                  numpy_helper.from_array(np.array(0, np.int8), "zb"),
                  numpy_helper.from_array(np.clip(np.round(weights / 0.05), -127, 127).astype(np.int8), "bq")]
        nodes += [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
                  helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
                  helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"])]
        left, right = "ad", "bd"
    else:
        inits.append(numpy_helper.from_array(weights, "b"))
    nodes.append(helper.make_node("MatMul", [left, right], ["c"]))
    graph = helper.make_graph(nodes, "ceiling", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _median_gops(run, size: int, seconds: float) -> float:
    import numpy as np

    a = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    for _ in range(3):
        run(a)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        run(a)
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * size ** 3 / times[len(times) // 2] / 1e9


def precision_ceilings(threads: int | None = None, size: int = 1024, seconds: float = 1.0) -> dict[str, dict]:
    """The fastest MatMul each number format reaches here, per engine: {precision: {engine: GFLOP/s (GOP/s)}}.

    fp32 and int8 (uint8 x int8) in ONNX Runtime (MLAS) and OpenVINO (oneDNN); bf16 in OpenVINO where
    its CPU plugin has native bf16. A variant is judged against the best figure of its own precision.
    """
    import tempfile

    import onnxruntime as ort

    out: dict[str, dict] = {"fp32": {}, "int8": {}}
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for precision, quantized in (("fp32", False), ("int8", True)):
        session = ort.InferenceSession(_matmul_model(size, quantized).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        out[precision]["onnxruntime"] = _median_gops(lambda a: session.run(None, {"a": a}), size, seconds)
    try:
        import onnx
        import openvino as ov

        from .backends.openvino import has_native_bf16
    except ImportError:
        return out
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    runs = [("fp32", False, "f32"), ("int8", True, "f32")] + ([("bf16", False, "bf16")] if has_native_bf16(core) else [])
    with tempfile.TemporaryDirectory() as tmp:
        for precision, quantized, hint in runs:
            path = f"{tmp}/{precision}.onnx"
            onnx.save_model(_matmul_model(size, quantized), path)
            compiled = core.compile_model(path, "CPU", {**config, "INFERENCE_PRECISION_HINT": hint})
            request = compiled.create_infer_request()
            out.setdefault(precision, {})["openvino"] = _median_gops(lambda a: request.infer({0: a}), size, seconds)
    return out
