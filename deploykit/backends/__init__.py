"""The backend registry: name -> Backend. GPU backends import their packages only when used."""

from __future__ import annotations

from ..errors import UserInputError
from .base import Backend, BuildOptions, BuildResult, Runner, cache_key

__all__ = ["Backend", "BuildOptions", "BuildResult", "Runner", "cache_key", "get_backend", "BACKENDS"]

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "ov-cpu", "torch")


def get_backend(name: str) -> Backend:
    if name in ("ort-cpu", "ort-cuda", "ort-trt"):
        from .ort import OrtBackend

        return OrtBackend(name)
    if name == "trt":
        from .trt import TrtBackend

        return TrtBackend()
    if name == "ov-cpu":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend()
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend()
    raise UserInputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def build(model, backend: str, output, options: BuildOptions | None = None) -> BuildResult:
    """`deploykit build` as a function: check the model and the output path, then build (or reuse) the artefact."""
    from pathlib import Path

    from .. import io

    io.load_model(model, load_weights=False)
    inputs = io.model_files(model)
    for path in (output, str(output) + ".json", str(output) + ".data", Path(output).with_suffix(".bin")):
        io.check_output_path(path, inputs)
    chosen = get_backend(backend)
    if options is not None and options.bf16 and backend != "ov-cpu":
        raise UserInputError(f"--bf16 is OpenVINO's CPU precision: build with --backend ov-cpu, not {backend}")
    chosen.check_options(options or BuildOptions())
    return chosen.build(Path(model), Path(output), options or BuildOptions())
