"""Handing verified artefacts to Triton Inference Server: a model-repository writer (no home-made server)."""

from .triton import PackageResult, package_triton

__all__ = ["PackageResult", "package_triton"]
