"""What machine a measurement ran on, and how fast it can multiply.

Each number format's ceiling is the fastest matrix product of the engines present (ONNX Runtime's
MLAS, OpenVINO's and torch's oneDNN), at the thread count the benchmarks use, not numpy's: its BLAS
can be built for, or set to, narrower vector units (OPENBLAS_CORETYPE) and understates the machine
by up to 2x. No one engine is fastest everywhere: on an AVX-512 EPYC, torch's fp32 product ran at
0.44 of ONNX Runtime's, its int8 one was the fastest and its bf16 one level with OpenVINO's.
"""

from __future__ import annotations

import os
import platform

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

    from .timing import latencies, median

    a = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    return 2 * size ** 3 / median(latencies(lambda: run(a), runs=5, seconds=seconds)) / 1e9


def _torch_ceilings(out: dict, threads: int | None, size: int, seconds: float) -> None:
    """torch's matrix products (oneDNN/MKL): fp32, bf16 where the CPU has native bf16 (emulated bf16 is
    no ceiling), and int8 through torch._int_mm (int8 x int8 into int32) where this build has it."""
    try:
        import torch
    except ImportError:
        return
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        runs = [("fp32", torch.float32)]
        if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            runs.append(("bf16", torch.bfloat16))
        if hasattr(torch, "_int_mm"):
            runs.append(("int8", torch.int8))
        generator = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for precision, dtype in runs:
                if dtype == torch.int8:
                    a, b = (torch.randint(-127, 128, (size, size), dtype=dtype, generator=generator) for _ in "ab")
                    product = torch._int_mm
                else:
                    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in "ab")
                    product = torch.mm
                try:
                    out.setdefault(precision, {})["torch"] = _median_gops(lambda _: product(a, b), size, seconds)
                except RuntimeError:
                    continue  # a build or CPU without that kernel
    finally:
        torch.set_num_threads(previous)


def precision_ceilings(threads: int | None = None, size: int = 1024, seconds: float = 1.0) -> dict[str, dict]:
    """The fastest MatMul each number format reaches here, per engine: {precision: {engine: GFLOP/s (GOP/s)}}.

    fp32 and int8 (uint8 x int8) in ONNX Runtime (MLAS) and OpenVINO (oneDNN); bf16 in OpenVINO where
    its CPU plugin has native bf16; and torch's products where torch is installed (see _torch_ceilings).
    A variant is judged against the best figure of its own precision.
    """
    import tempfile

    from .ort_session import new_session

    out: dict[str, dict] = {"fp32": {}, "int8": {}}
    for precision, quantized in (("fp32", False), ("int8", True)):
        session = new_session(_matmul_model(size, quantized), threads=threads)
        out[precision]["onnxruntime"] = _median_gops(lambda a: session.run(None, {"a": a}), size, seconds)
    _torch_ceilings(out, threads, size, seconds)
    try:
        import onnx
        import openvino as ov

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


def has_native_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 kernels here (AVX512_BF16 or AMX), not an emulation."""
    if core is None:
        import openvino as ov

        core = ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
