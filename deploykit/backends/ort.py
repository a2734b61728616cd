"""ONNX Runtime backends: ort-cpu, ort-cuda and ort-trt are one runner with different provider options.

ort-trt enables the TensorRT execution provider's engine cache and timing cache in a directory
deploykit manages, sets its FP16/INT8 flags, and gives explicit min/opt/max profile shapes for
the dynamic input, so ORT builds the TensorRT engine once instead of on every new shape.

Building for ort-cpu saves the model as ONNX Runtime optimises it at the EXTENDED level (fusions,
constant folding: portable across CPUs), which loads faster; at run time the session still applies
the CPU-specific layout (level ALL), which measured as fast as optimising from scratch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import BackendUnavailableError, UserInputError
from .base import Backend, BuildOptions, BuildResult, Runner, cache_dir, cache_key, file_sha256



class OrtBackend(Backend):
    def __init__(self, name: str, provider: str):
        self.name = name
        self.provider = provider  # ONNX Runtime's execution provider (deploykit.backends.registry)
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.needs = "" if name == "ort-cpu" else ("onnxruntime-gpu (in place of onnxruntime) and a CUDA GPU: "
                                                    "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        # Precision and profiles are settings of ORT's TensorRT provider only; the CPU and CUDA providers run
        # the model's own types.
        self.honours = frozenset({"lean_memory"} | ({"fp16", "int8", "min_shape", "opt_shape", "max_shape",
                                                      "workspace_mb"} if name == "ort-trt" else set()))

    def check_available(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(f"{self.name} needs onnxruntime: pip install onnxruntime") from None
        if self.name != "ort-cpu":
            both = installed_ort_flavours()
            if len(both) > 1:
                raise BackendUnavailableError(
                    f"{' and '.join(both)} are both installed and overwrite each other's files (the GPU providers "
                    "can vanish): keep one, e.g. pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                    "onnxruntime-gpu")
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailableError(f"{self.name} needs {self.needs}")

    def environment(self) -> dict:
        import onnxruntime as ort

        env = {"onnxruntime": ort.__version__, "provider": self.provider}
        if self.name == "ort-cpu":
            from ..machine import cpu_flags

            env["cpu_flags"] = sorted(cpu_flags())
        return env

    def provider_options(self, options: BuildOptions, model: Path | None = None) -> dict:
        if self.name == "ort-cuda":
            return {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}
        if self.name != "ort-trt":
            return {}
        # ORT keys its engine cache by the model's path: one folder per model content keeps a built engine found
        # again when the artefact is copied, renamed or served from another folder.
        engines = cache_dir() / "ort-trt" / (file_sha256(model)[:16] if model is not None else "any")
        engines.mkdir(parents=True, exist_ok=True)
        opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engines),
                "trt_fp16_enable": options.fp16, "trt_int8_enable": options.int8}
        if options.workspace_mb:
            opts["trt_max_workspace_size"] = int(options.workspace_mb) << 20
        if model is not None and any((options.min_shape, options.opt_shape, options.max_shape)):
            names = _input_names(model)
            bounds = {n: options.profile(n, i == 0) for i, n in enumerate(names)}
            for idx, key in enumerate(("min", "opt", "max")):
                given = [f"{n}:{'x'.join(map(str, b[idx]))}" for n, b in bounds.items() if b is not None]
                if given:
                    opts[f"trt_profile_{key}_shapes"] = ",".join(given)
        return opts

    def build(self, model: Path, output: Path, options: BuildOptions) -> BuildResult:
        self.check_available()
        import onnxruntime as ort

        from .. import storage

        start = time.perf_counter()
        key = cache_key(file_sha256(model), self.name, options, self.environment())
        cached = cache_dir() / "artefacts" / f"{key}.onnx"
        hit = cached.exists()
        external = storage.has_external_data(model)
        if not hit:
            cached.parent.mkdir(parents=True, exist_ok=True)
            if self.name == "ort-cpu":
                with storage.atomic_path(cached) as tmp:
                    so = ort.SessionOptions()
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                    so.optimized_model_filepath = str(tmp)
                    so.log_severity_level = 3
                    if external:
                        # The weights stay in a side file beside the cached model, as they were beside the input.
                        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                    cached.name + ".data")
                        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                    "1024")
                    _create_session(ort, model, so, ["CPUExecutionProvider"])
            else:
                storage.copy_model(model, cached)
                # Creating the session builds (and caches) the TensorRT / CUDA kernels now, not at first use.
                _create_session(ort, cached, None, [(self.provider, self.provider_options(options, model)),
                                                    "CPUExecutionProvider"])
        if options.lean_memory or external:
            # Lean memory: the weights in a side file that ORT maps rather than copies.
            storage.save_model(storage.load_model(cached), output, external_weights=True)
        else:
            storage.copy_model(cached, output)
        sidecar = {"backend": self.name, "options": options.to_dict(), "environment": self.environment(), "key": key,
                   "provider_options": {k: v for k, v in self.provider_options(options, model).items()}}
        with storage.atomic_path(Path(str(output) + ".json")) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2, default=list) + "\n")
        size = sum(p.stat().st_size for p in storage.model_files(output) if p.exists())
        return BuildResult(self.name, output, time.perf_counter() - start, size, hit, key)

    def runner(self, artefact: Path, options: BuildOptions | None = None, threads: int | None = None) -> Runner:
        self.check_available()
        return OrtRunner(artefact, self, built_options(artefact, options), threads)


def built_options(artefact, given: BuildOptions | None) -> BuildOptions:
    """The options an artefact was built with (its sidecar), where the caller gave none: a runner of an ort-trt
    artefact built --fp16 must run an fp16 engine, not build an fp32 one. What the caller gives wins."""
    if given is not None and given != BuildOptions(lean_memory=given.lean_memory):
        return given
    sidecar = Path(str(artefact) + ".json")
    try:
        recorded = json.loads(sidecar.read_text()).get("options") or {}
    except (OSError, ValueError):
        return given or BuildOptions()

    def shape(value):
        if not value:
            return None
        return tuple((n, tuple(s)) for n, s in value) if isinstance(value[0], list) and value and isinstance(
            value[0][0], str) else tuple(value)

    fields = {k: v for k, v in recorded.items() if k in BuildOptions.__dataclass_fields__}
    for key in ("min_shape", "opt_shape", "max_shape"):
        fields[key] = shape(fields.get(key))
    if given is not None:
        fields["lean_memory"] = given.lean_memory or fields.get("lean_memory", False)
    return BuildOptions(**fields)

def installed_ort_flavours() -> list[str]:
    """The ONNX Runtime distributions installed: onnxruntime (CPU) and onnxruntime-gpu share one module."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


class OrtRunner(Runner):
    def __init__(self, artefact: Path, backend: OrtBackend, options: BuildOptions, threads: int | None):
        from ..runtime import Engine

        providers = [(backend.provider, backend.provider_options(options, artefact))]
        if backend.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.engine = Engine(artefact, providers=[p[0] for p in providers], intra_op_threads=threads,
                             lean_memory=options.lean_memory,
                             provider_options=[p[1] for p in providers])
        self.input_names = self.engine.input_names
        self.input_shapes = {name: shape for name, shape, _ in self.engine.inputs}
        self.input_types = {name: t for name, _, t in self.engine.inputs}
        self.device = backend.device

    def infer(self, feeds):
        # Engine validates: the same checks as infer(). On a GPU, I/O binding: outputs stay on the device until
        # the one copy back, instead of ORT's staging through host buffers.
        return self.engine.run_bound(feeds, device="cuda") if self.device == "cuda" else self.engine.run(feeds)

    def infer_impl(self, feeds):
        return self.engine.run(feeds)

    def close(self):
        self.engine.close()

def _create_session(ort, model: Path, options, providers):
    """A session, with ONNX Runtime's refusal (an opset it lacks, a broken graph) as one line."""
    try:
        return ort.InferenceSession(str(model), options, providers=providers)
    except Exception as exc:
        from ..verify import runtime_refusal

        raise runtime_refusal(model, exc) from exc


def _input_names(model: Path) -> list[str]:
    import onnx

    from ..storage import graph_inputs

    inputs = graph_inputs(onnx.load(str(model), load_external_data=False))
    if not inputs:
        raise UserInputError(f"{model} has no inputs")
    return [i.name for i in inputs]
