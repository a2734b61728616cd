"""ov-cpu: OpenVINO's CPU plugin (oneDNN kernels) on deploykit's ONNX models and artefacts.

OpenVINO reads ONNX directly, QDQ models included, which it runs in int8. Its CPU plugin picks
bf16 silently wherever the CPU has it; deploykit never lets that happen unannounced: every
artefact and runner has one stated precision, f32 unless bf16 is asked for, and bf16 is refused
on a CPU without native bf16 rather than emulated.

Building writes OpenVINO IR (MODEL.xml + MODEL.bin), portable across CPUs, with the precision
recorded in the IR's rt_info and in the sidecar; the cache key carries OpenVINO's version and the
CPU's vector extensions. The compiled form is cached by OpenVINO itself (CACHE_DIR) so a second
load skips compilation.

Thread safety: one compiled model, one infer request per calling thread.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from ..machine import has_native_bf16  # noqa: F401  (a machine fact; callers import it here too)
from ..errors import BackendUnavailableError, UserInputError
from .base import Backend, BuildOptions, BuildResult, Runner, cache_dir, cache_key, file_sha256

PRECISIONS = ("f32", "bf16", "int8")
_RT_INFO = ["deploykit", "precision"]
# OpenVINO element types as the ONNX Runtime type strings that deploykit's input checks speak.
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i8": "tensor(int8)",
          "u8": "tensor(uint8)", "i32": "tensor(int32)", "i64": "tensor(int64)", "boolean": "tensor(bool)"}


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("ov-cpu needs OpenVINO: pip install 'deploykit[openvino]'") from None
    return openvino


def _onnx_ops(path: Path) -> frozenset[tuple[str, str]]:
    """(domain, op type) of every node, read once per version of the file (build and runner both ask)."""
    stat = path.stat()
    return _ops_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _ops_of(path: str, mtime_ns: int, size: int) -> frozenset[tuple[str, str]]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return frozenset((n.domain, n.op_type) for n in graph.node)


def _check_readable(path: Path) -> None:
    """OpenVINO reads standard ONNX only: ONNX Runtime's own ops (com.microsoft) are refused with the fix."""
    if path.suffix != ".onnx":
        return
    foreign = sorted({f"{domain}.{op}" for domain, op in _onnx_ops(path) if domain not in ("", "ai.onnx")})
    if foreign:
        from .. import storage

        written_by_deploykit = "passes" in storage.get_metadata(storage.load_model(path, load_weights=False))
        fix = ("optimize the model it came from again with --target openvino (or --no-fuse) for ov-cpu"
               if written_by_deploykit else
               "they came with the model, and no optimize option removes them: run it with ort-cpu, or export it "
               "again from its source without ONNX Runtime's contrib ops")
        raise UserInputError(f"{path.name} holds ONNX Runtime's own ops ({', '.join(foreign[:3])}), which OpenVINO "
                             f"cannot run: {fix}")


def _is_quantized(path: Path) -> bool:
    return any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in _onnx_ops(path))


class OpenVinoBackend(Backend):
    name = "ov-cpu"
    device = "cpu"
    needs = "OpenVINO: pip install 'deploykit[openvino]'"
    honours = frozenset({"bf16", "int8", "fp16"})  # fp16 is refused by precision() with its own reason

    def check_available(self) -> None:
        ov = import_openvino()
        if "CPU" not in ov.Core().available_devices:
            raise BackendUnavailableError("ov-cpu: OpenVINO finds no CPU device here")

    def environment(self) -> dict:
        ov = import_openvino()
        from ..machine import cpu_flags

        return {"openvino": ov.__version__, "cpu_flags": sorted(cpu_flags())}

    def precision(self, options: BuildOptions, model: Path | None = None) -> str:
        """The one precision an artefact runs in; refuses what this CPU or model cannot honestly give."""
        if options.fp16:
            raise UserInputError("ov-cpu has no fp16 on the CPU: use --bf16 (where the CPU has it) or --int8")
        if options.int8:
            if model is not None and model.suffix == ".onnx" and not _is_quantized(model):
                raise UserInputError(f"{model.name} has no QuantizeLinear/DequantizeLinear nodes: quantize it first "
                                     "with 'deploykit optimize --int8', then build that model with --int8")
            return "int8"
        if options.bf16:
            if not has_native_bf16():
                from ..machine import cpu_model

                raise BackendUnavailableError(
                    f"this CPU ({cpu_model()}) has no native bf16 (it needs AVX512_BF16 or AMX): build for f32, "
                    "or quantize with 'deploykit optimize --int8'")
            return "bf16"
        if model is not None and model.suffix == ".onnx" and _is_quantized(model):
            return "int8"  # a QDQ model runs in int8 in OpenVINO whatever is asked: say so
        return "f32"

    def build(self, model: Path, output: Path, options: BuildOptions) -> BuildResult:
        self.check_available()
        ov = import_openvino()
        from .. import storage

        if output.suffix != ".xml":
            raise UserInputError(f"ov-cpu writes OpenVINO IR: name the output MODEL.xml (got {output.name})")
        start = time.perf_counter()
        _check_readable(model)
        precision = self.precision(options, model)
        key = cache_key(file_sha256(model), self.name, options, self.environment())
        cached = cache_dir() / "artefacts" / f"{key}.xml"
        hit = cached.exists() and cached.with_suffix(".bin").exists()
        if not hit:
            cached.parent.mkdir(parents=True, exist_ok=True)
            read = read_model(model)
            read.set_rt_info(precision, _RT_INFO)
            _save_ir(ov, read, cached)
            _compile(ov.Core(), cached, precision, None)  # proves it compiles on this machine before it is used
        bin_out = output.with_suffix(".bin")
        storage.check_output_path(bin_out, storage.model_files(model))
        with storage.atomic_path(bin_out) as tmp:
            shutil.copyfile(cached.with_suffix(".bin"), tmp)
        with storage.atomic_path(output) as tmp:  # the .xml last: a reader never sees it without its weights
            shutil.copyfile(cached, tmp)
        sidecar = {"backend": self.name, "precision": precision, "options": options.to_dict(),
                   "environment": self.environment(), "key": key}
        with storage.atomic_path(Path(str(output) + ".json")) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2, default=list) + "\n")
        size = output.stat().st_size + bin_out.stat().st_size
        return BuildResult(self.name, output, time.perf_counter() - start, size, hit, key,
                           {"precision": precision})

    def runner(self, artefact: Path, options: BuildOptions | None = None, threads: int | None = None,
               precision: str | None = None) -> Runner:
        """`precision` (f32 or bf16) overrides; else the options', else what a built IR records, else f32
        (int8 for a QDQ model)."""
        self.check_available()
        artefact = Path(artefact)
        options = options or BuildOptions()
        if artefact.is_file():
            _check_readable(artefact)
        if precision is None:
            recorded = artefact.suffix == ".xml" and not (options.bf16 or options.int8)
            precision = recorded_precision(artefact) if recorded else self.precision(options, artefact)
        if precision == "bf16":
            self.precision(BuildOptions(bf16=True))  # refused in one line on a CPU without native bf16
        elif precision == "f32" and artefact.suffix == ".onnx" and _is_quantized(artefact):
            precision = "int8"  # its Q/DQ pairs run in int8 whatever the hint for the float layers says
        return OpenVinoRunner(artefact, precision, threads)


def recorded_precision(xml: Path) -> str:
    """The precision a built IR was made for (its rt_info, else its sidecar), f32 when neither says."""
    ov = import_openvino()
    model = ov.Core().read_model(str(xml))
    if model.has_rt_info(_RT_INFO):
        return str(model.get_rt_info(_RT_INFO).astype(str))
    sidecar = Path(str(xml) + ".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text()).get("precision", "f32")
    return "f32"


def _save_ir(ov, model, xml: Path) -> None:
    """IR pair written beside `xml` atomically (.bin first), weights kept in their own precision."""
    from .. import storage

    staging = xml.parent / f".{xml.stem}.staging"
    staging.mkdir(exist_ok=True)
    try:
        ov.save_model(model, str(staging / xml.name), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            with storage.atomic_path(xml.with_suffix(suffix)) as tmp:
                shutil.copyfile((staging / xml.name).with_suffix(suffix), tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _compile(core, model_path: Path, precision: str, threads: int | None, cache: bool = True):
    config = {
        # f32 and int8 artefacts keep their float layers in f32: OpenVINO's default here would be bf16.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    }
    if cache:
        config["CACHE_DIR"] = str(cache_dir() / "ov-compiled")
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    try:
        return core.compile_model(str(model_path), "CPU", config)
    except Exception as exc:
        raise UserInputError(f"OpenVINO cannot compile {model_path.name}: {_first_line(exc)}") from exc


def read_model(path: Path):
    """OpenVINO's model for an ONNX file or an IR .xml; what it cannot read is one UserInputError line."""
    ov = import_openvino()
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        raise UserInputError(f"OpenVINO cannot read {Path(path).name}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    """OpenVINO's error as one line: its source locations dropped, a heading that ends in ':' joined with what
    follows it (a conversion failure says which ops only after "Summary:")."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    meaningful = [l for l in lines if not l.startswith(("Exception from", "Check '"))]
    specific = [l.lstrip("- ").strip() for l in meaningful if "conversion rule" in l or "failed for" in l]
    if specific:
        return "; ".join(specific)[:300]
    picked = meaningful or lines or [type(exc).__name__]
    text = picked[0]
    rest = iter(picked[1:])
    while text.endswith(":"):
        following = next(rest, None)
        if following is None:
            break
        text = f"{text} {following}"
    return text[:300]


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model at one stated precision; one infer request per calling thread."""

    def __init__(self, artefact: Path, precision: str, threads: int | None = None, cache: bool = True):
        """`cache=False` for a model compiled once and thrown away (a budget search's trial): OpenVINO's
        compiled-model cache would keep every trial."""
        ov = import_openvino()
        if not artefact.is_file():
            raise UserInputError(f"model file {artefact} does not exist")
        if precision not in PRECISIONS:
            raise UserInputError(f"unknown OpenVINO precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.path = artefact
        self.precision = precision
        self._compiled = _compile(ov.Core(), artefact, precision, threads, cache)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._requests = []  # kept so close() can release them all
        self.input_names, self.input_shapes, self.input_types = [], {}, {}
        for port in self._compiled.inputs:
            name = port.get_any_name()
            self.input_names.append(name)
            self.input_shapes[name] = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            self.input_types[name] = _TYPES.get(port.get_element_type().get_type_name(), "")
        self.output_names = [port.get_any_name() for port in self._compiled.outputs]

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            if self._compiled is None:
                raise UserInputError(f"this OpenVINO runner for {self.path.name} is closed: create a new one")
            request = self._compiled.create_infer_request()
            self._local.request = request
            with self._lock:
                self._requests.append(request)
        return request

    def infer_impl(self, feeds):
        from ..errors import ShapeMismatchError

        if self._compiled is None:
            raise UserInputError(f"this OpenVINO runner for {self.path.name} is closed: create a new one")
        request = self._request()
        try:
            result = request.infer({n: np.ascontiguousarray(a) for n, a in feeds.items()})
        except Exception as exc:
            raise ShapeMismatchError(f"OpenVINO refused the inputs of {self.path.name}: {_first_line(exc)}") from exc
        return [np.array(result[port]) for port in self._compiled.outputs]

    def close(self) -> None:
        with self._lock:
            self._requests.clear()
        self._compiled = None
