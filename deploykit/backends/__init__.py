"""The backend registry: name -> Backend. GPU backends import their packages only when used."""

from __future__ import annotations

import os

from ..errors import UserInputError
from .registry import BACKENDS, BUILD_BACKENDS, REGISTRY, BackendEntry
from .base import Backend, BuildOptions, BuildResult, Runner, cache_key

__all__ = ["Backend", "BuildOptions", "BuildResult", "Runner", "cache_key", "get_backend", "BACKENDS", "BUILD_BACKENDS",
           "REGISTRY", "BackendEntry", "describe_backends", "build"]





def get_backend(name: str) -> Backend:
    entry = REGISTRY.get(name)
    if entry is None:
        raise UserInputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    import importlib

    factory = getattr(importlib.import_module(entry.module, __name__), entry.factory)
    return factory(name, entry.ort_provider) if entry.ort_provider else factory()


def describe_backends() -> list[dict]:
    """One row per registered backend: name, what it is, whether build makes an artefact, Engine's names for it."""
    return [{"name": e.name, "summary": e.summary, "builds": e.builds, "engine_names": list(e.engine_names)}
            for e in REGISTRY.values()]


def build(model: str | os.PathLike, backend: str, output: str | os.PathLike,
          options: BuildOptions | None = None) -> BuildResult:
    """`deploykit build` as a function: check the model and the output path, then build (or reuse) the artefact."""
    from pathlib import Path

    from .. import storage

    storage.load_model(model, load_weights=False)
    inputs = storage.model_files(model)
    for path in (output, str(output) + ".json", str(output) + ".data", Path(output).with_suffix(".bin")):
        storage.check_output_path(path, inputs)
    chosen = get_backend(backend)
    if options is not None and options.bf16 and backend != "ov-cpu":
        raise UserInputError(f"--bf16 is OpenVINO's CPU precision: build with --backend ov-cpu, not {backend}")
    chosen.check_options(options or BuildOptions())
    return chosen.build(Path(model), Path(output), options or BuildOptions())
