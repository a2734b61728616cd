"""The backend registry: every engine deploykit builds for and runs, as data (no backend module is imported here).

deploykit.backends.get_backend imports a backend's module when it is used; the CLI's choices,
`deploykit backends` and Engine's provider names read this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendEntry:
    """One engine deploykit can build for and run: where its class lives and what each layer calls it."""

    name: str  # `deploykit build/bench --backend NAME`
    module: str  # relative to deploykit.backends, imported only when the backend is used
    factory: str
    summary: str
    builds: bool = True  # `deploykit build` makes an artefact for it
    engine_names: tuple[str, ...] = ()  # Engine(providers=NAME) for this engine
    ort_provider: str | None = None  # ONNX Runtime's execution provider, for the ORT backends


# Every backend, in the order `deploykit backends` lists them. The CLI's choices, `deploykit backends` and
# Engine's provider names are all read from here; tests/backends/test_backends.py checks it against the package.
REGISTRY: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("ort-cpu", ".ort", "OrtBackend", "ONNX Runtime on the CPU (the default)",
                 engine_names=("cpu",), ort_provider="CPUExecutionProvider"),
    BackendEntry("ort-cuda", ".ort", "OrtBackend", "ONNX Runtime's CUDA provider (onnxruntime-gpu, a CUDA GPU)",
                 engine_names=("cuda",), ort_provider="CUDAExecutionProvider"),
    BackendEntry("ort-trt", ".ort", "OrtBackend", "ONNX Runtime's TensorRT provider, engines cached",
                 engine_names=("tensorrt",), ort_provider="TensorrtExecutionProvider"),
    BackendEntry("trt", ".trt", "TrtBackend", "native TensorRT: a serialized .plan engine (tensorrt, a CUDA GPU)"),
    BackendEntry("ov-cpu", ".openvino", "OpenVinoBackend", "OpenVINO on the CPU: f32, bf16 where native, int8 QDQ",
                 engine_names=("openvino", "ov-cpu")),
    BackendEntry("torch", ".torch_backend", "TorchBackend", "PyTorch eager or compiled (bench only: a zoo name)",
                 builds=False),
)}
BACKENDS = tuple(REGISTRY)
BUILD_BACKENDS = tuple(name for name, entry in REGISTRY.items() if entry.builds)
