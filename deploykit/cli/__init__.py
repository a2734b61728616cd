"""The `deploykit` command: a thin click layer over the Python API.

One module per verb in deploykit/cli/verbs/ (each parses its options, calls one API function and prints),
what they share in common.py, the program around them (errors, signals) in main.py. Every module in the
verbs folder is a verb: a new one is a new file there. Heavy imports (torch, onnx) happen inside commands
so that `deploykit --help` is instant.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import verbs
from .common import cli
from .main import interrupted_message, main

for _verb in pkgutil.iter_modules(verbs.__path__):
    importlib.import_module(f"{verbs.__name__}.{_verb.name}")

__all__ = ["cli", "main", "interrupted_message"]
