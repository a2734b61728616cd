"""Engine: the runtime a production service embeds. Loads once, runs many times, from many threads.

Imports onnxruntime lazily and never imports torch: torch tensors are recognised by duck typing
and converted with .numpy(), which shares memory with a CPU tensor rather than copying it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import BackendUnavailableError, ShapeMismatchError, UserInputError
from .feeds import ORT_DTYPES as _ORT_DTYPES  # noqa: F401  (the names this module had before feeds.py)
from .feeds import as_numpy as _as_numpy  # noqa: F401
from .feeds import pretty_shape as _pretty_shape
from .feeds import validate_feeds
from .backends.registry import REGISTRY as BACKEND_REGISTRY
from .storage import DEPLOYMENT_ENGINE_KEY, DEPLOYMENT_PRECISION_KEY, float_precision
from .ort_session import OPT_LEVELS as _OPT_LEVELS

# "auto" tries these in order; ONNX Runtime assigns each node to the first provider that can run it.
_PROVIDER_ALIASES = {name: entry.ort_provider for entry in BACKEND_REGISTRY.values() if entry.ort_provider
                     for name in entry.engine_names}
# "trt" meant ORT's TensorRT provider here while `--backend trt` is native TensorRT: kept one release, with a warning.
_DEPRECATED_ALIASES = {"trt": "tensorrt"}
# TensorRT is not in "auto": without an engine cache it builds its engines again at every session start
# (minutes for a large model); it is used when asked for by name ("tensorrt"), with deploykit's cache.
_AUTO_ORDER = ["CUDAExecutionProvider", "CPUExecutionProvider"]
_OPENVINO = BACKEND_REGISTRY["ov-cpu"].engine_names  # not an ORT provider: OpenVINO's own runtime (deploykit.backends.openvino)


def runs_in_openvino(path: Path, providers) -> bool:
    """Whether Engine(path, providers) runs the model in OpenVINO rather than ONNX Runtime."""
    return path.suffix == ".xml" or (isinstance(providers, str) and providers.lower() in _OPENVINO)


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("ONNX Runtime is not installed: pip install onnxruntime") from None
    return onnxruntime


def check_providers_used(requested: Sequence[str], used: Sequence[str], label: str) -> None:
    """ONNX Runtime falls back to the CPU, silently, when a GPU provider's libraries (CUDA, cuDNN, TensorRT) fail to
    load: a GPU provider that was asked for and is not in the session is an error, not a slow surprise."""
    missing = [p for p in requested if p != "CPUExecutionProvider" and p not in used]
    if missing:
        raise BackendUnavailableError(
            f"{label}: {', '.join(missing)} was asked for but ONNX Runtime did not use it (the session runs on "
            f"{', '.join(used)}): its libraries did not load; check the CUDA/cuDNN versions onnxruntime-gpu needs "
            "(python -c 'import onnxruntime; onnxruntime.preload_dlls()' says which)")


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Map "auto" / "cpu" / "cuda" / "tensorrt" (or full provider names) to what this machine has.

    An explicit choice that is not available raises: silently running on the CPU instead of the GPU
    the caller asked for would hide a deployment mistake.
    """
    ort = _import_ort()
    available = ort.get_available_providers()
    if isinstance(providers, str):
        if providers == "auto":
            return [p for p in _AUTO_ORDER if p in available]
        providers = [providers]
    resolved = []
    for p in providers:
        if p.lower() in _DEPRECATED_ALIASES:
            import warnings

            warnings.warn(f"Engine(providers={p!r}) is deprecated: say {_DEPRECATED_ALIASES[p.lower()]!r} (ONNX Runtime's "
                          "TensorRT provider; a native TensorRT engine is a built .plan file)", DeprecationWarning,
                          stacklevel=3)
            p = _DEPRECATED_ALIASES[p.lower()]
        full = _PROVIDER_ALIASES.get(p.lower(), p)
        if full not in available:
            pkg = ("onnxruntime-gpu in place of onnxruntime, and a CUDA GPU (pip uninstall -y onnxruntime && "
                   "pip install onnxruntime-gpu)") if full != "CPUExecutionProvider" else "onnxruntime"
            raise BackendUnavailableError(
                f"execution provider {p!r} is not available here (available: {', '.join(available)}); it needs {pkg}"
            )
        resolved.append(full)
    return resolved


class Engine:
    """Run an ONNX model with validated inputs.

    >>> engine = Engine("model.onnx")            # providers="auto": TensorRT, then CUDA, then CPU
    >>> logits = engine(images)                  # numpy array or torch tensor; returns numpy
    """

    def __init__(self, model: str | os.PathLike, providers: str | Sequence[str] = "auto", *,
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                 graph_optimization_level: str | None = None, lean_memory: bool = False,
                 session_options: Any = None, provider_options: Sequence[dict] | None = None,
                 precision: str | None = None):
        path = Path(model)
        if path.is_dir():
            raise UserInputError(f"{path} is a directory: give the model file inside it (an .onnx, an ov-cpu .xml or "
                                 "a trt .plan)")
        if not path.is_file():
            raise UserInputError(f"model file {path} does not exist")
        self.path = path
        self.lean_memory = lean_memory
        self._plan = None
        self._session = None
        self._closed = False
        follow_recorded = providers == "auto" and path.suffix == ".onnx" and precision is None
        openvino = runs_in_openvino(path, providers)
        if precision is not None and not openvino:
            raise UserInputError("precision= applies to OpenVINO (providers='openvino' or a built .xml): ONNX Runtime "
                                 "runs the model in the precision its graph has")
        if path.suffix == ".plan" or openvino:
            ignored = [name for name, value in (("session_options", session_options),
                                                ("graph_optimization_level", graph_optimization_level),
                                                ("inter_op_threads", inter_op_threads),
                                                ("provider_options", provider_options),
                                                ("lean_memory", lean_memory or None)) if value is not None]
            if path.suffix == ".plan" and intra_op_threads is not None:
                ignored.append("intra_op_threads")
            if ignored:
                runner = "TensorRT" if path.suffix == ".plan" else "OpenVINO"
                raise UserInputError(f"{', '.join(ignored)} configure ONNX Runtime sessions and {runner} runs "
                                     f"{path.name}: drop them" + ("" if path.suffix == ".plan" else
                                                                   " (intra_op_threads and precision apply)"))
            if path.suffix == ".plan":
                # A TensorRT plan: the native TensorRT runner, behind the same validated interface.
                from .backends.trt import TrtRunner

                self._use_plan(TrtRunner(path))
            else:
                self._use_plan(_openvino_runner(path, precision, intra_op_threads))
            return
        ort = _import_ort()
        if graph_optimization_level is not None and graph_optimization_level not in _OPT_LEVELS:
            raise UserInputError(f"unknown graph optimisation level {graph_optimization_level!r}: "
                                 f"choose one of {', '.join(_OPT_LEVELS)}")
        if session_options is None:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3  # errors reach the caller as exceptions, not as log lines on stderr
            graph_optimization_level = graph_optimization_level or "all"
        else:
            opts = session_options  # the caller's settings stand, unless a level is asked for explicitly
        if graph_optimization_level is not None:
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization_level])
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            opts.inter_op_num_threads = int(inter_op_threads)
        if lean_memory:
            # Prepacked weight copies and the arena roughly double a CNN's resident weights. With the
            # weights in an external data file (deploykit build --lean-memory) ORT also maps them
            # instead of copying: VGG-16 then peaks at 1.1x its floor, at the same speed.
            opts.enable_cpu_mem_arena = False
            opts.add_session_config_entry("session.disable_prepacking", "1")
            _return_large_buffers_to_os()
        requested = resolve_providers(providers)
        try:
            if provider_options is not None:
                self._session = ort.InferenceSession(str(path), sess_options=opts, providers=requested,
                                                     provider_options=list(provider_options))
            else:
                self._session = ort.InferenceSession(str(path), sess_options=opts, providers=requested)
        except Exception as exc:
            from . import storage
            from .ort_session import runtime_refusal

            storage.load_model(path)  # raises the one-line "not an ONNX model" / "weights missing" error
            raise runtime_refusal(path, exc) from exc
        metadata = self._session.get_modelmeta().custom_metadata_map
        if follow_recorded and metadata.get(DEPLOYMENT_ENGINE_KEY) == "ov-cpu":
            # An artefact `optimize --recipe fast` chose OpenVINO for runs there, at the precision it was judged at;
            # read from the session's metadata, so no other Engine pays a second read of the model.
            recorded = metadata.get(DEPLOYMENT_PRECISION_KEY)
            self._session = None
            self._use_plan(_openvino_runner(path, float_precision(recorded or ""), intra_op_threads))
            return
        check_providers_used(requested, self._session.get_providers(), path.name)
        _check_cpu_layout(path, metadata)
        self.inputs = [(i.name, tuple(i.shape), i.type) for i in self._session.get_inputs()]
        self.outputs = [o.name for o in self._session.get_outputs()]
        self._run_options = ort.RunOptions()
        # Run-time failures reach the caller as exceptions; ORT would also print each one at level 3 (error).
        self._run_options.log_severity_level = 4

    def _use_plan(self, plan) -> None:
        """Run through a backend runner (a TensorRT plan, OpenVINO) instead of an ORT session."""
        self._plan = plan
        self.inputs = plan.inputs
        self.outputs = list(plan.output_names)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order ("TensorRT" for a .plan)."""
        if self._plan is not None:
            precision = getattr(self._plan, "precision", None)
            return [f"OpenVINO CPU ({precision})"] if precision else ["TensorRT"]
        return self._session.get_providers()

    @property
    def input_names(self) -> list[str]:
        return [name for name, _, _ in self.inputs]

    def __call__(self, *args, **kwargs):
        """engine(x) -> the single output; engine(x) -> tuple when the model has several outputs."""
        outs = self.run(*args, **kwargs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, *args, **kwargs) -> list[np.ndarray]:
        """Validate and run; returns every output, in the model's order.

        Takes inputs as __call__ does: engine.run(x), engine.run(x1, x2), engine.run({name: x}) or engine.run(name=x).
        """
        if self._closed:
            raise UserInputError(f"this Engine for {self.path.name} is closed: create a new one")
        checked = self._validate(self._feeds(args, kwargs))
        if self._plan is not None:
            return self._plan.infer(checked)
        try:
            return self._session.run(self.outputs, checked, self._run_options)
        except Exception as exc:
            if self._closed:
                raise UserInputError(f"this Engine for {self.path.name} is closed: create a new one") from None
            from .ort_session import runtime_message

            message = runtime_message(exc)
            if "while running" in message:  # the inputs were accepted; a node failed on their values
                raise UserInputError(f"{self.path.name} failed on these input values "
                                     f"({', '.join(f'{n} {_pretty_shape(a.shape)}' for n, a in checked.items())}): "
                                     f"{message}; the shapes and types are right, check the values (indices within "
                                     "the model's tables, lengths within its limits)") from exc
            raise ShapeMismatchError(f"ONNX Runtime refused the inputs of {self.path.name} "
                                     f"({', '.join(f'{n} {_pretty_shape(a.shape)}' for n, a in checked.items())}): "
                                     f"{runtime_message(exc)}") from exc

    def run_bound(self, *args, device: str = "cuda", **kwargs) -> list[np.ndarray]:
        """run() through ONNX Runtime's I/O binding: each input is copied to `device` once, the outputs are
        allocated there by ORT and copied back once at the end (run() lets ORT stage both through host buffers).
        For a session on the CUDA or TensorRT provider; device="cpu" runs the same path on the CPU."""
        if self._closed:
            raise UserInputError(f"this Engine for {self.path.name} is closed: create a new one")
        if self._plan is not None:
            raise UserInputError("run_bound() is ONNX Runtime's I/O binding: a TensorRT plan or OpenVINO model keeps "
                                 "its own buffers; use run()")
        checked = self._validate(self._feeds(args, kwargs))
        binding = self._session.io_binding()
        for name, array in checked.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.outputs:
            binding.bind_output(name, device)
        self._session.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        """Release the session (and its memory). Calls after close raise a clear error."""
        self._closed = True
        if self._plan is not None:
            self._plan.close()
        self._session = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _feeds(self, args, kwargs) -> dict:
        if args and kwargs:
            raise UserInputError("pass inputs either positionally or by name, not both")
        if len(args) == 1 and isinstance(args[0], Mapping):
            feeds = dict(args[0])
        elif args:
            if len(args) != len(self.inputs):
                raise ShapeMismatchError(f"model {self.path.name} takes {len(self.inputs)} input(s) "
                                         f"({', '.join(self.input_names)}), got {len(args)}")
            feeds = dict(zip(self.input_names, args))
        else:
            feeds = kwargs
        return feeds

    def _validate(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return validate_feeds(f"model {self.path.name}", self.inputs, feeds)


def _openvino_runner(path: Path, precision: str | None, threads: int | None):
    from .backends.openvino import OpenVinoBackend

    if precision is not None and precision not in ("f32", "bf16"):
        raise UserInputError(f"precision {precision!r} is not one OpenVINO runs at: choose f32 or bf16 (int8 comes "
                             "from a QDQ model made by 'deploykit optimize --int8')")
    return OpenVinoBackend().runner(path, threads=threads, precision=precision)


def _check_cpu_layout(path: Path, metadata: dict) -> None:
    """A model with ORT's CPU layout baked in runs only on a CPU with the extensions it was built for."""
    from .machine import META_CPU, cpu_flags

    built = metadata.get(META_CPU)
    if built is None:
        return
    missing = sorted(set(filter(None, built.split(","))) - cpu_flags())
    if missing:
        raise BackendUnavailableError(
            f"{path.name} carries ONNX Runtime's CPU layout for a CPU with {', '.join(missing)}, which this CPU "
            "lacks: rebuild it here with 'deploykit optimize --ort-layout', or use the model without --ort-layout")


def _return_large_buffers_to_os() -> None:
    """Without ORT's arena, activations come from malloc; glibc keeps large freed blocks in its heap,
    and over many runs VGG-16's peak grew from 1.0x to 1.3x its floor. A 1 MiB mmap threshold
    returns them to the OS on free (process-wide: a documented effect of lean_memory)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except OSError:
        pass
