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
import shutil
import time
from pathlib import Path

from ..errors import BackendUnavailableError, UserInputError
from .base import Backend, BuildOptions, BuildResult, Runner, cache_dir, cache_key, file_sha256

_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
              "ort-trt": "TensorrtExecutionProvider"}

class OrtBackend(Backend):
    def __init__(self, name: str):
        self.name = name
        self.provider = _PROVIDERS[name]
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.needs = "" if name == "ort-cpu" else "onnxruntime-gpu and a CUDA GPU: pip install 'deploykit[gpu]'"

    def check_available(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(f"{self.name} needs onnxruntime: pip install onnxruntime") from None
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
        engines = cache_dir() / "ort-trt"
        engines.mkdir(parents=True, exist_ok=True)
        opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engines),
                "trt_fp16_enable": options.fp16, "trt_int8_enable": options.int8}
        if options.workspace_mb:
            opts["trt_max_workspace_size"] = int(options.workspace_mb) << 20
        if options.min_shape and model is not None:
            name = _input_name(model)
            for key, shape in (("min", options.min_shape), ("opt", options.opt_shape or options.min_shape),
                               ("max", options.max_shape or options.opt_shape or options.min_shape)):
                opts[f"trt_profile_{key}_shapes"] = f"{name}:{'x'.join(map(str, shape))}"
        return opts

    def build(self, model: Path, output: Path, options: BuildOptions) -> BuildResult:
        self.check_available()
        import onnxruntime as ort

        from ..io import atomic_path

        start = time.perf_counter()
        key = cache_key(file_sha256(model), self.name, options, self.environment())
        cached = cache_dir() / "artefacts" / f"{key}.onnx"
        hit = cached.exists()
        if not hit:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                if self.name == "ort-cpu":
                    so = ort.SessionOptions()
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                    so.optimized_model_filepath = str(tmp)
                    so.log_severity_level = 3
                    ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
                else:
                    shutil.copyfile(model, tmp)
                    # Creating the session builds (and caches) the TensorRT / CUDA kernels now, not at first use.
                    ort.InferenceSession(str(tmp), providers=[(self.provider, self.provider_options(options, model)),
                                                               "CPUExecutionProvider"])
        with atomic_path(output) as tmp:
            shutil.copyfile(cached, tmp)
        sidecar = {"backend": self.name, "options": options.to_dict(), "environment": self.environment(), "key": key,
                   "provider_options": {k: v for k, v in self.provider_options(options, model).items()}}
        with atomic_path(Path(str(output) + ".json")) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2, default=list) + "\n")
        return BuildResult(self.name, output, time.perf_counter() - start, output.stat().st_size, hit, key)

    def runner(self, artefact: Path, options: BuildOptions | None = None, threads: int | None = None) -> Runner:
        self.check_available()
        return OrtRunner(artefact, self, options or BuildOptions(), threads)

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

    def infer(self, feeds):
        return self.engine.run(feeds)

def _input_name(model: Path) -> str:
    import onnx

    from ..io import graph_inputs

    inputs = graph_inputs(onnx.load(str(model), load_external_data=False))
    if not inputs:
        raise UserInputError(f"{model} has no inputs")
    return inputs[0].name
