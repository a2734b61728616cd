"""deploykit: take a trained PyTorch CNN to a fast, verified inference artefact.

Public API, one function per verb: export, inspect_model, optimize_model, build, benchmark (bench), package_triton,
slide_image, Server (serve); Engine; and every error type (deploykit.errors). Importing deploykit (and
Engine) never imports torch; export imports it when called.
"""

from ._version import __version__
from .errors import (
    BackendUnavailableError,
    BudgetNotHeld,
    DeploykitError,
    ShapeMismatchError,
    UnreachableBudget,
    UserInputError,
    VerificationError,
)
from .runtime import Engine

__all__ = [
    "__version__", "Engine", "export", "inspect_model", "load_model", "optimize_model", "build", "benchmark",
    "package_triton", "slide_image", "Server",
    "DeploykitError", "UserInputError", "ShapeMismatchError", "VerificationError", "BackendUnavailableError",
    "BudgetNotHeld", "UnreachableBudget",
]


# The module is exporter.py, not export.py: a submodule named like a public function would replace
# the function on the package as soon as anything imported it.
_LAZY = {"export": ".exporter", "inspect_model": ".inspect", "load_model": ".zoo", "optimize_model": ".optimize",
         "build": ".backends", "benchmark": ".bench", "package_triton": ".serving.triton", "slide_image": ".slide",
         "Server": ".serving.server"}


def __getattr__(name):
    # Lazy so that `from deploykit import Engine` stays light in production processes (no torch).
    if name not in _LAZY:
        raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), {"benchmark": "bench"}.get(name, name))
    globals()[name] = value
    return value
