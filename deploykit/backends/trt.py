"""Native TensorRT: parse ONNX, build a serialised plan, run it.

Build: one optimization profile for each dynamic input (min/opt/max from the options, else from the
model's recorded input shape), FP16 and INT8 flags (INT8 through the QDQ model from
`deploykit optimize --int8 --target tensorrt`: explicit quantization, which TensorRT 10 prefers
over calibrators), a persistent timing cache in deploykit's cache directory, and a workspace limit.
The plan is written with a sidecar JSON recording the TensorRT version, the GPU's name and compute
capability, the precision and the profiles. A plan only runs on the TensorRT version and GPU model
it was built for, so loading checks the sidecar first and says which differs and how to rebuild,
instead of failing inside TensorRT.

Device memory and the CUDA stream come from PyTorch (present wherever CUDA is), which avoids a
dependency on cuda-python.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, UserInputError
from .base import Backend, BuildOptions, BuildResult, Runner, cache_dir, cache_key, file_sha256

NEEDS = "tensorrt and a CUDA GPU: pip install 'deploykit[gpu]'"


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(f"trt needs {NEEDS}") from None
    return trt


def gpu_identity() -> dict:
    """Name and compute capability of GPU 0, through PyTorch's CUDA runtime."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(f"trt needs {NEEDS} (and PyTorch for device memory)") from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"trt needs {NEEDS}; no CUDA GPU is visible here")
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def check_plan_compatible(sidecar: dict, tensorrt_version: str, gpu: dict, plan: Path) -> None:
    """Raise a one-line error when a plan was built for another TensorRT version or GPU."""
    built_version = sidecar.get("tensorrt")
    if built_version != tensorrt_version:
        raise BackendUnavailableError(
            f"{plan.name} was built with TensorRT {built_version}, this machine has {tensorrt_version}: "
            f"rebuild it here with 'deploykit build MODEL.onnx --backend trt -o {plan.name}'")
    if sidecar.get("gpu") != gpu.get("gpu") or sidecar.get("compute_capability") != gpu.get("compute_capability"):
        raise BackendUnavailableError(
            f"{plan.name} was built for {sidecar.get('gpu')} (compute capability {sidecar.get('compute_capability')}), "
            f"this machine has {gpu.get('gpu')} ({gpu.get('compute_capability')}): rebuild it here with "
            f"'deploykit build MODEL.onnx --backend trt -o {plan.name}'")


# TensorRT's I/O data types by name -> numpy's. BF16 and FP8 have no numpy type: such a plan is refused.
_TRT_TO_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool"}
_NUMPY_TO_ORT = {"float32": "tensor(float)", "float16": "tensor(float16)", "int8": "tensor(int8)",
                 "uint8": "tensor(uint8)", "int32": "tensor(int32)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
_TORCH_TYPES = {"float32": lambda t: t.float32, "float16": lambda t: t.float16, "int8": lambda t: t.int8,
                "uint8": lambda t: t.uint8, "int32": lambda t: t.int32, "int64": lambda t: t.int64,
                "bool": lambda t: t.bool}


def describe_io(engine, trt) -> dict:
    """A deserialised engine's inputs and outputs: names, input shapes (a dynamic dimension, which TensorRT
    reports as -1, becomes None: any size the profile takes), and numpy / ORT types for every tensor."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    numpy_types = {}
    for n in names:
        kind = getattr(engine.get_tensor_dtype(n), "name", str(engine.get_tensor_dtype(n))).rpartition(".")[2]
        if kind not in _TRT_TO_NUMPY:
            raise UserInputError(f"tensor {n!r} of the plan is {kind}, which has no numpy type: export the model "
                                 "with float32, float16 or integer inputs and outputs")
        numpy_types[n] = _TRT_TO_NUMPY[kind]
    return {"inputs": inputs, "outputs": [n for n in names if n not in inputs],
            "input_shapes": {n: tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(n))
                             for n in inputs},
            "input_types": {n: _NUMPY_TO_ORT[numpy_types[n]] for n in inputs}, "numpy_types": numpy_types}


def set_input_shapes(context, engine, shapes: dict) -> None:
    """Give the execution context each input's shape; a shape outside the plan's profile is one line naming it."""
    for name, shape in shapes.items():
        if not context.set_input_shape(name, tuple(shape)):
            low, _, high = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            raise UserInputError(f"input {name!r} of shape {'x'.join(map(str, shape))} is outside the plan's profile "
                                 f"({'x'.join(map(str, low))} to {'x'.join(map(str, high))}): rebuild with a wider "
                                 "--min-shape/--max-shape, or send a batch inside it")


def timing_cache_path(tensorrt_version: str, gpu: dict) -> Path:
    """One timing cache per TensorRT version and GPU model: timings from another are not valid here."""
    tag = f"{tensorrt_version}-{gpu.get('gpu', 'gpu')}-{gpu.get('compute_capability', '')}"
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in tag)
    return cache_dir() / f"trt-timing-{safe}.cache"


def sidecar_path(plan: Path) -> Path:
    return Path(str(plan) + ".json")


class TrtBackend(Backend):
    name = "trt"
    honours = frozenset({"fp16", "int8", "min_shape", "opt_shape", "max_shape", "workspace_mb"})
    device = "cuda"
    needs = NEEDS

    def check_available(self) -> None:
        _import_trt()
        gpu_identity()

    def environment(self) -> dict:
        trt = _import_trt()
        return {"tensorrt": trt.__version__, **gpu_identity()}

    def build(self, model: Path, output: Path, options: BuildOptions) -> BuildResult:
        trt = _import_trt()
        env = self.environment()
        from ..storage import atomic_path

        start = time.perf_counter()
        key = cache_key(file_sha256(model), self.name, options, env)
        cached = cache_dir() / "artefacts" / f"{key}.plan"
        hit = cached.exists()
        profiles = {}
        if not hit:
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(model)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise UserInputError(f"TensorRT cannot parse {model}: {errors}")
            config = builder.create_builder_config()
            if options.workspace_mb:
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
            for wanted, flag in ((options.fp16, "FP16"), (options.int8, "INT8")):
                if wanted:
                    if not hasattr(trt.BuilderFlag, flag):  # TensorRT 11 builds strongly typed networks only
                        raise BackendUnavailableError(
                            f"TensorRT {trt.__version__} has no {flag} builder flag: build deploykit's "
                            f"{'--fp16' if flag == 'FP16' else '--int8 (QDQ)'} model without --{flag.lower()}, or "
                            "install tensorrt<11 (pip install 'deploykit[gpu]' pins it)")
                    config.set_flag(getattr(trt.BuilderFlag, flag))
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                dims = list(tensor.shape)
                if any(d < 0 for d in dims):
                    lo, opt, hi = _profile(tensor.name, i == 0, options, model)
                    profile.set_shape(tensor.name, lo, opt, hi)
                    profiles[tensor.name] = [lo, opt, hi]
            if profiles:
                config.add_optimization_profile(profile)
            timing_file = timing_cache_path(trt.__version__, env)
            timing = config.create_timing_cache(timing_file.read_bytes() if timing_file.exists() else b"")
            config.set_timing_cache(timing, ignore_mismatch=False)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise BackendUnavailableError(f"TensorRT failed to build an engine for {model} (see its log above)")
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                tmp.write_bytes(bytes(serialized))
            with atomic_path(timing_file) as tmp:
                tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
            sidecar_path(cached).write_text(json.dumps(
                {**env, "precision": options.precision, "profiles": profiles, "key": key,
                 "signature": recorded_signature(model)}, indent=2) + "\n")
        with atomic_path(output) as tmp:
            tmp.write_bytes(cached.read_bytes())
        with atomic_path(sidecar_path(output)) as tmp:
            tmp.write_text(sidecar_path(cached).read_text())
        return BuildResult(self.name, output, time.perf_counter() - start, output.stat().st_size, hit, key,
                           {"profiles": profiles, **env})

    def runner(self, artefact: Path, options: BuildOptions | None = None, threads: int | None = None) -> Runner:
        return TrtRunner(artefact)


def recorded_signature(model: Path) -> dict:
    """The ONNX model's inputs and outputs as Triton names them: `package --triton` reads a plan's from here."""
    from .. import storage
    from ..signature import signature_tensors

    inputs, outputs = signature_tensors(storage.load_model(model, load_weights=False))
    as_dicts = lambda tensors: [{"name": n, "data_type": t, "dims": d} for n, t, d in tensors]  # noqa: E731
    return {"inputs": as_dicts(inputs), "outputs": as_dicts(outputs)}


def _profile(name: str, first: bool, options: BuildOptions, model: Path):
    given = options.profile(name, first)
    if given is not None:
        return tuple(list(s) for s in given)
    import onnx

    from ..storage import get_metadata
    from ..signature import recorded_shapes

    proto = onnx.load(str(model), load_external_data=False)
    recorded = recorded_shapes(get_metadata(proto), [name]).get(name)
    if not recorded:
        raise UserInputError(f"input {name!r} is dynamic and the model records no shape for it: give "
                             f"--min-shape/--opt-shape/--max-shape {name}:SHAPE")
    opt = list(recorded)
    lo = [1] + opt[1:]
    hi = [max(opt[0], 32)] + opt[1:]
    return lo, opt, hi


class TrtRunner(Runner):
    """Runs a serialised plan: inputs copied to the GPU, executed on a stream, outputs copied back."""

    def __init__(self, plan: Path):
        trt = _import_trt()
        gpu = gpu_identity()
        side = sidecar_path(plan)
        if not side.exists():
            raise UserInputError(f"{plan} has no sidecar {side.name}: rebuild it with 'deploykit build --backend trt'")
        check_plan_compatible(json.loads(side.read_text()), trt.__version__, gpu, plan)
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not load {plan}: rebuild it with 'deploykit build --backend trt'")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        io_ = describe_io(self.engine, trt)
        self.input_names, self.output_names = io_["inputs"], io_["outputs"]
        self.input_shapes, self.input_types = io_["input_shapes"], io_["input_types"]
        self._numpy_types = io_["numpy_types"]
        self.precision = json.loads(side.read_text()).get("precision", "fp32")
        self._last: dict[str, float] = {}
        # One execution context holds the shapes and tensor addresses of the call in flight: calls from
        # several threads (Engine is documented thread-safe) take turns on it.
        self._lock = threading.Lock()

    def infer_impl(self, feeds):
        with self._lock:
            return self._execute(feeds)

    def _execute(self, feeds):
        torch = self.torch
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(self.stream):
            events[0].record()
            device_inputs = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])).cuda(non_blocking=True)
                             for n in self.input_names}
            events[1].record()
            set_input_shapes(self.context, self.engine, {n: tuple(t.shape) for n, t in device_inputs.items()})
            for n, t in device_inputs.items():
                self.context.set_tensor_address(n, t.data_ptr())
            outputs = {}
            for n in self.output_names:
                shape = tuple(self.context.get_tensor_shape(n))
                outputs[n] = torch.empty(shape, dtype=_TORCH_TYPES[np.dtype(self._numpy_types[n]).name](torch),
                                         device="cuda")
                self.context.set_tensor_address(n, outputs[n].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendUnavailableError("TensorRT execution failed")
            events[2].record()
            host = [outputs[n].cpu() for n in self.output_names]
            events[3].record()
        self.stream.synchronize()
        self._last = {"h2d_ms": events[0].elapsed_time(events[1]), "compute_ms": events[1].elapsed_time(events[2]),
                      "d2h_ms": events[2].elapsed_time(events[3])}
        return [h.numpy() for h in host]

    def timings(self):
        return dict(self._last)

    def close(self) -> None:
        """Release the execution context and the engine (their device memory) now, not at garbage collection."""
        with self._lock:
            self.context = None
            self.engine = None
            self.runtime = None
