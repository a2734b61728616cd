"""`deploykit package MODEL --triton REPO`: one Triton model-repository entry, written atomically.

The entry is REPO/NAME/config.pbtxt and REPO/NAME/VERSION/ holding the model under the file name
Triton's backend looks for:
- onnxruntime (`platform: "onnxruntime_onnx"`): model.onnx, with its external data file if any;
  on a GPU node, `--gpu-accelerator tensorrt` asks ONNX Runtime's TensorRT provider to run it;
- openvino (`backend: "openvino"`, CPU only): model.xml + model.bin, converted from the ONNX model
  or copied from a deploykit ov-cpu artefact (.xml);
- tensorrt (`platform: "tensorrt_plan"`, GPU only): model.plan, from a deploykit `build --backend
  trt` artefact, whose sidecar records the signature of the ONNX model it was built from (a plan's
  own description needs TensorRT, and a GPU, to read).
Inputs and outputs come from the model's signature: Triton's data type for each,
and its dims with -1 for every dynamic dimension. When the first dimension of every input and
output is a dynamic batch, `max_batch_size` is set (default 8) and the batch dimension is left out
of `dims`, as Triton's schema wants; a model with a fixed batch gets `max_batch_size: 0` and its full
shapes. `dynamic_batching` (with preferred sizes and the queue delay) only makes sense with a batch
dimension and is refused otherwise.

The entry is assembled in a hidden folder inside REPO and renamed into place, so Triton (which may
poll the repository) never sees half an entry; an existing entry of that name is refused unless
`force` is given, and then replaced whole.
"""

from __future__ import annotations

import json
import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import storage
from ..signature import TRITON_TYPES, signature_tensors  # noqa: F401  (Triton's names for ONNX types)
from ..errors import UserInputError

# ONNX TensorProto data type -> Triton's model_config DataType name.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "tensorrt": "tensorrt_plan"}
# OpenVINO's element type names -> Triton's.
OV_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "f64": "TYPE_FP64", "i8": "TYPE_INT8",
            "i16": "TYPE_INT16", "i32": "TYPE_INT32", "i64": "TYPE_INT64", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16",
            "u32": "TYPE_UINT32", "u64": "TYPE_UINT64", "boolean": "TYPE_BOOL"}
MODEL_FILES = {"onnxruntime": "model.onnx", "openvino": "model.xml", "tensorrt": "model.plan"}
DEFAULT_MAX_BATCH = 8


@dataclass
class PackageResult:
    entry: Path
    config: Path
    model_file: Path
    platform: str
    max_batch_size: int
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(entry=str(self.entry), config=str(self.config), model_file=str(self.model_file))
        return d


def package_triton(model: str | Path, repo: str | Path, *, name: str | None = None, version: int = 1, max_batch_size: int | None = None,
                   dynamic_batching: bool = True, preferred_batch_sizes=(), max_queue_delay_us: int | None = None,
                   instances: int = 1, kind: str | None = None, backend: str | None = None,
                   gpu_accelerator: str | None = None, force: bool = False) -> PackageResult:
    """Write REPO/NAME (see the module docstring) for the model at `model` (.onnx, ov-cpu .xml, trt .plan)."""
    source = Path(model)
    if not source.is_file():
        raise UserInputError(f"{source} does not exist: give an ONNX model or a deploykit artefact (.xml, .plan)")
    implied = {".plan": "tensorrt", ".xml": "openvino"}.get(source.suffix.lower(), "onnxruntime")
    backend = backend or implied
    if backend not in PLATFORMS:
        raise UserInputError(f"--backend {backend!r} cannot be packaged: choose {', '.join(PLATFORMS)}")
    if backend == "tensorrt" and implied != "tensorrt":
        raise UserInputError(f"{source.name} is not a TensorRT plan: build one with 'deploykit build --backend trt' on "
                             "the GPU machine that will serve it, then package the .plan")
    if implied != "onnxruntime" and backend != implied:
        raise UserInputError(f"{source.name} is a {implied} artefact: package it with --backend {implied}, or "
                             "package the ONNX model it was built from")
    kind = kind or ("gpu" if backend == "tensorrt" else "cpu")
    if kind not in ("cpu", "gpu"):
        raise UserInputError(f"--kind must be cpu or gpu, not {kind!r}")
    if backend == "tensorrt" and kind != "gpu":
        raise UserInputError("a TensorRT plan runs on a GPU only: use --kind gpu")
    if backend == "openvino" and kind != "cpu":
        raise UserInputError("Triton's OpenVINO backend runs on the CPU only: use --kind cpu")
    if gpu_accelerator is not None and (backend != "onnxruntime" or kind != "gpu"):
        raise UserInputError("--gpu-accelerator is for ONNX models on a GPU: add --kind gpu and --backend onnxruntime")
    if gpu_accelerator not in (None, "tensorrt", "tensorrt-fp16"):
        raise UserInputError(f"--gpu-accelerator {gpu_accelerator!r}: choose tensorrt or tensorrt-fp16")
    if version < 1 or instances < 1:
        raise UserInputError("--version and --instances must be positive integers")
    tensors_in, tensors_out = _signature(source)
    name = name or source.stem
    if not name or name.startswith(".") or "/" in name or name != name.strip():
        raise UserInputError(f"bad model name {name!r}: give --name with letters, digits, '-' or '_'")
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UserInputError(f"{repo} is a file: --triton needs a model repository folder")
    entry = repo / name
    if entry.exists() and not force:
        raise UserInputError(f"{entry} already exists (another model's entry?): choose another --name, or --force "
                             "to replace it")
    for f in _source_files(source):
        if entry in f.resolve().parents or f.resolve() == entry.resolve():
            raise UserInputError(f"the model {source} lives inside {entry}: package it to another repository or name")

    batched = all(dims and dims[0] is None for _, _, dims in tensors_in + tensors_out)
    max_batch_size = resolve_max_batch(batched, max_batch_size, preferred_batch_sizes)
    if (preferred_batch_sizes or max_queue_delay_us) and not (dynamic_batching and max_batch_size > 0):
        raise UserInputError("--preferred-batch-size and --max-queue-delay-us need dynamic batching and "
                             "--max-batch-size above 0")

    def tensors(specs):
        dims_of = (lambda d: d[1:]) if max_batch_size > 0 else (lambda d: d)
        return [{"name": n, "data_type": t, "dims": [-1 if d is None else d for d in dims_of(dims)]}
                for n, t, dims in specs]

    inputs, outputs = tensors(tensors_in), tensors(tensors_out)
    text = _config_text(name, backend, max_batch_size, inputs, outputs,
                        dynamic_batching and max_batch_size > 0, preferred_batch_sizes, max_queue_delay_us,
                        instances, kind, gpu_accelerator)
    created = [p for p in [repo, *repo.parents] if not p.exists()]  # removed again if the entry is not written
    try:
        repo.mkdir(parents=True, exist_ok=True)
        with storage.temporary(Path(tempfile.mkdtemp(prefix=f".{name[:100]}.", suffix=".tmp", dir=repo))) as staging:
            (staging / str(version)).mkdir()
            _write_model(source, backend, staging / str(version) / MODEL_FILES[backend])
            (staging / "config.pbtxt").write_text(text)
            os.chmod(staging, 0o777 & ~_umask())
            if entry.exists():
                with storage.temporary(Path(tempfile.mkdtemp(prefix=f".{name[:100]}.old.", dir=repo))) as old:
                    os.replace(entry, old / name)
                    os.replace(staging, entry)
            else:
                os.replace(staging, entry)
    except BaseException:
        for folder in created:  # deepest first; only what this call made and left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return PackageResult(entry, entry / "config.pbtxt", entry / str(version) / MODEL_FILES[backend],
                         PLATFORMS[backend], max_batch_size, inputs, outputs)


def resolve_max_batch(batched: bool, max_batch_size: int | None, preferred_batch_sizes=()) -> int:
    """Triton's max_batch_size: DEFAULT_MAX_BATCH (or as asked) when every input and output has a dynamic
    first dimension, else 0; a batch Triton cannot form, or preferred sizes beyond it, are refused."""
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH if batched else 0
    if max_batch_size > 0 and not batched:
        raise UserInputError("the model has a fixed batch dimension: Triton can only batch a model whose first "
                             "dimension is dynamic on every input and output; use --max-batch-size 0 or re-export "
                             "with --dynamic-batch")
    if max_batch_size < 0:
        raise UserInputError("--max-batch-size must be 0 or more")
    if any(b < 1 or b > max_batch_size for b in preferred_batch_sizes):
        raise UserInputError(f"preferred batch sizes must lie in 1..{max_batch_size} (--max-batch-size)")
    return max_batch_size


Tensor = tuple  # (name, Triton data type, dims with None for a dynamic dimension)


def _signature(source: Path) -> tuple[list[Tensor], list[Tensor]]:
    """The model's inputs and outputs, read from the file itself (ONNX, IR) or a plan's sidecar."""
    if source.suffix.lower() == ".plan":
        from ..backends.trt import sidecar_path

        side = sidecar_path(source)
        recorded = json.loads(side.read_text()).get("signature") if side.is_file() else None
        if not recorded:
            raise UserInputError(f"{source.name} has no recorded signature ({side.name}): rebuild it with "
                                 "'deploykit build --backend trt', or package the ONNX model it was built from")
        return ([(t["name"], t["data_type"], t["dims"]) for t in recorded["inputs"]],
                [(t["name"], t["data_type"], t["dims"]) for t in recorded["outputs"]])
    if source.suffix.lower() == ".xml":
        from ..backends.openvino import read_model

        read = read_model(source)

        def ports(items):
            out = []
            for port in items:
                type_name = port.get_element_type().get_type_name()
                if type_name not in OV_TYPES:
                    raise UserInputError(f"tensor {port.get_any_name()!r} has element type {type_name}, which "
                                         "Triton does not know")
                shape = port.get_partial_shape()
                if shape.rank.is_dynamic:
                    raise UserInputError(f"tensor {port.get_any_name()!r} has no known rank: Triton needs one")
                out.append((port.get_any_name(), OV_TYPES[type_name],
                            [d.get_length() if d.is_static else None for d in shape]))
            return out

        return ports(read.inputs), ports(read.outputs)
    return signature_tensors(storage.load_model(source, load_weights=False))


def _source_files(source: Path) -> list[Path]:
    if source.suffix.lower() == ".xml":
        return [source, source.with_suffix(".bin")]
    if source.suffix.lower() == ".plan":
        return [source]
    return storage.model_files(source)


def _write_model(source: Path, backend: str, target: Path) -> None:
    if backend == "onnxruntime":
        storage.copy_model(source, target)
    elif backend == "tensorrt":
        shutil.copyfile(source, target)
    elif source.suffix.lower() == ".xml":
        shutil.copyfile(source.with_suffix(".bin"), target.with_suffix(".bin"))
        shutil.copyfile(source, target)
    else:  # ONNX for Triton's OpenVINO backend: converted to IR, weights kept in their own precision
        from ..backends.openvino import import_openvino, read_model

        import_openvino().save_model(read_model(source), str(target), compress_to_fp16=False)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _config_text(name, backend, max_batch_size, inputs, outputs, dynamic, preferred, delay_us, instances,
                 kind, gpu_accelerator=None) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig); the tests parse it with Triton's own schema."""
    def tensor_block(key, items):
        lines = [f"{key} ["]
        for i, t in enumerate(items):
            lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                      f"    dims: [ {', '.join(map(str, t['dims']))} ]", "  }" + ("," if i < len(items) - 1 else "")]
        return lines + ["]"]

    # Triton names the OpenVINO backend by `backend`; ONNX Runtime and TensorRT models by `platform`.
    kind_line = 'backend: "openvino"' if backend == "openvino" else f'platform: "{PLATFORMS[backend]}"'
    lines = [f'name: "{name}"', kind_line, f"max_batch_size: {max_batch_size}"]
    lines += tensor_block("input", inputs) + tensor_block("output", outputs)
    if dynamic:
        lines.append("dynamic_batching {")
        if preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
        if delay_us:
            lines.append(f"  max_queue_delay_microseconds: {int(delay_us)}")
        lines.append("}")
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: KIND_{kind.upper()}", "  }", "]"]
    if gpu_accelerator:
        # ONNX Runtime's TensorRT provider on the GPU node; it builds the engine there, at load.
        precision = "FP16" if gpu_accelerator.endswith("fp16") else "FP32"
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator : [", "      {",
                  '        name : "tensorrt"', f'        parameters {{ key: "precision_mode" value: "{precision}" }}',
                  "      }", "    ]", "  }", "}"]
    return "\n".join(lines) + "\n"
