"""deploykit: take a trained PyTorch CNN to a fast, verified inference artefact.

Public API: export, inspect_model, Engine, and the error types. Importing deploykit (and Engine)
never imports torch; export imports it when called.
"""

from ._version import __version__
from .errors import (
    BackendUnavailableError,
    DeploykitError,
    ShapeMismatchError,
    UserInputError,
    VerificationError,
)
from .runtime import Engine

__all__ = [
    "__version__", "Engine", "export", "inspect_model", "load_model",
    "DeploykitError", "UserInputError", "ShapeMismatchError", "VerificationError", "BackendUnavailableError",
]


def __getattr__(name):
    # Lazy so that `from deploykit import Engine` stays light in production processes.
    if name == "export":
        from .export import export

        return export
    if name == "inspect_model":
        from .inspect import inspect_model

        return inspect_model
    if name == "load_model":
        from .zoo import load_model

        return load_model
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
