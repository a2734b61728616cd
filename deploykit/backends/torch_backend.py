"""PyTorch eager on the source model: the baseline every speed-up is quoted against.

It needs the source module, so it serves zoo names and file.py:factory models, not ONNX files.
`compile=True` runs torch.compile where it works (it falls back to eager and says so).
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError, UserInputError
from .base import Backend, BuildOptions, Runner


class TorchBackend(Backend):
    name = "torch"
    device = "cpu"
    needs = "PyTorch: pip install 'deploykit[torch]'"

    def check_available(self) -> None:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BackendUnavailableError(f"torch needs {self.needs}") from None

    def environment(self) -> dict:
        import torch

        return {"torch": torch.__version__}

    def build(self, model, output, options):
        raise UserInputError("the torch backend runs the source model directly: there is nothing to build")

    def runner(self, artefact, options: BuildOptions | None = None, threads: int | None = None,
               compile: bool = False) -> Runner:
        self.check_available()
        return TorchRunner(str(artefact), threads, compile)


class TorchRunner(Runner):
    def __init__(self, spec: str, threads: int | None, compile: bool):
        import torch

        from ..zoo import load_zoo_model

        if threads:
            torch.set_num_threads(int(threads))
        loaded = load_zoo_model(spec)
        self.torch = torch
        self.module = loaded.module
        self.compiled = False
        if compile:
            try:
                self.module = torch.compile(self.module)
                self.compiled = True
            except Exception:
                self.compiled = False
        self.input_names = ["input"]
        # The batch is free; the rest of the recorded shape is what the module was built for.
        self.input_shapes = {"input": ("batch",) + tuple(loaded.input_shape[1:]) if loaded.input_shape else None}
        self.input_types = {"input": "tensor(float)"}

    def infer_impl(self, feeds):
        with self.torch.inference_mode():
            y = self.module(self.torch.from_numpy(np.ascontiguousarray(feeds["input"])))
        outs = list(y) if isinstance(y, (tuple, list)) else [y]
        return [o.numpy() for o in outs]
