"""Handing verified artefacts to Triton Inference Server: a model-repository writer, and `serve` (PyTriton)."""

from .server import Server, ServeInfo
from .triton import PackageResult, package_triton

__all__ = ["PackageResult", "ServeInfo", "Server", "package_triton"]
