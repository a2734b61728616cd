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

# Old names kept for one release, each with a DeprecationWarning: module -> its new home.
_RENAMED_MODULES = {"deploykit.io": "deploykit.storage", "deploykit.inspect": "deploykit.analysis"}
_RENAMED_FUNCTIONS = {"load_model": "load_zoo_model"}


class _RenamedModuleFinder:
    """Lets `import deploykit.io` / `deploykit.inspect` (renamed: they read like the standard library's) load
    the new module, with a warning, instead of failing."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in _RENAMED_MODULES:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, _RenamedModuleFinder)

    @staticmethod
    def create_module(spec):
        import importlib
        import warnings

        new = _RENAMED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is now {new}; the old name goes in the next release", DeprecationWarning,
                      stacklevel=3)
        return importlib.import_module(new)

    @staticmethod
    def exec_module(module):
        pass


import sys as _sys  # noqa: E402

if not any(isinstance(f, type) and f.__name__ == "_RenamedModuleFinder" for f in _sys.meta_path):
    _sys.meta_path.append(_RenamedModuleFinder)

__all__ = [
    "__version__", "Engine", "export", "inspect_model", "load_zoo_model", "optimize_model", "build", "benchmark",
    "package_triton", "slide_image", "Server",
    "DeploykitError", "UserInputError", "ShapeMismatchError", "VerificationError", "BackendUnavailableError",
    "BudgetNotHeld", "UnreachableBudget",
]


# The module is exporter.py, not export.py: a submodule named like a public function would replace
# the function on the package as soon as anything imported it.
_LAZY = {"export": ".exporter", "inspect_model": ".analysis", "load_zoo_model": ".zoo", "optimize_model": ".optimize",
         "build": ".backends", "benchmark": ".bench", "package_triton": ".serving.triton", "slide_image": ".slide",
         "Server": ".serving.server"}


def __getattr__(name):
    # Lazy so that `from deploykit import Engine` stays light in production processes (no torch).
    if name in _RENAMED_FUNCTIONS:
        import warnings

        warnings.warn(f"deploykit.{name} is now deploykit.{_RENAMED_FUNCTIONS[name]} (it loads a zoo model into "
                      "PyTorch; ONNX files are read by deploykit.storage.load_model)", DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED_FUNCTIONS[name])
    if name not in _LAZY:
        raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), {"benchmark": "bench"}.get(name, name))
    globals()[name] = value
    return value
