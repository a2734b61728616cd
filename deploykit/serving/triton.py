"""`deploykit package MODEL --triton REPO`: one Triton model-repository entry, written atomically.

The entry is REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.onnx (with its external data file,
if it has one). Inputs and outputs come from the model's signature: Triton's data type for each,
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

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import io
from ..errors import UserInputError

# ONNX TensorProto data type -> Triton's model_config DataType name.
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                13: "TYPE_UINT64", 16: "TYPE_BF16"}
PLATFORMS = {"onnxruntime": "onnxruntime_onnx"}
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


def package_triton(model, repo, *, name: str | None = None, version: int = 1, max_batch_size: int | None = None,
                   dynamic_batching: bool = True, preferred_batch_sizes=(), max_queue_delay_us: int | None = None,
                   instances: int = 1, kind: str = "cpu", backend: str = "onnxruntime",
                   force: bool = False) -> PackageResult:
    """Write REPO/NAME (see the module docstring) for the ONNX model at `model`."""
    from ..signature import read_signature

    source = Path(model)
    if source.suffix == ".plan":
        raise UserInputError("packaging a TensorRT .plan needs the plan's input/output description, which only "
                             "TensorRT can read; package the ONNX model with --backend onnxruntime (Triton's "
                             "TensorRT accelerator can build the engine on the GPU node)")
    if backend not in PLATFORMS:
        raise UserInputError(f"--backend {backend!r} cannot be packaged yet: choose {', '.join(PLATFORMS)}")
    if kind not in ("cpu", "gpu"):
        raise UserInputError(f"--kind must be cpu or gpu, not {kind!r}")
    if version < 1 or instances < 1:
        raise UserInputError("--version and --instances must be positive integers")
    proto = io.load_model(source, load_weights=False)
    signature = read_signature(proto)
    name = name or source.stem
    if not name or name.startswith(".") or "/" in name or name != name.strip():
        raise UserInputError(f"bad model name {name!r}: give --name with letters, digits, '-' or '_'")
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UserInputError(f"{repo} is a file: --triton needs a model repository folder")
    repo.mkdir(parents=True, exist_ok=True)
    entry = repo / name
    if entry.exists() and not force:
        raise UserInputError(f"{entry} already exists (another model's entry?): choose another --name, or --force "
                             "to replace it")
    for f in io.model_files(source):
        if entry in f.resolve().parents or f.resolve() == entry.resolve():
            raise UserInputError(f"the model {source} lives inside {entry}: package it to another repository or name")

    batched = all(spec.dims and not isinstance(spec.dims[0], int) for spec in signature.inputs + signature.outputs)
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH if batched else 0
    if max_batch_size > 0 and not batched:
        raise UserInputError("the model has a fixed batch dimension: Triton can only batch a model whose first "
                             "dimension is dynamic on every input and output; use --max-batch-size 0 or re-export "
                             "with --dynamic-batch")
    if max_batch_size < 0:
        raise UserInputError("--max-batch-size must be 0 or more")
    if (preferred_batch_sizes or max_queue_delay_us) and not (dynamic_batching and max_batch_size > 0):
        raise UserInputError("--preferred-batch-size and --max-queue-delay-us need dynamic batching and "
                             "--max-batch-size above 0")
    if any(b < 1 or b > max_batch_size for b in preferred_batch_sizes):
        raise UserInputError(f"preferred batch sizes must lie in 1..{max_batch_size} (--max-batch-size)")

    def tensors(specs):
        out = []
        for spec in specs:
            if spec.elem_type not in TRITON_TYPES:
                raise UserInputError(f"tensor {spec.name!r} has an element type Triton does not know")
            if spec.dims is None:
                raise UserInputError(f"tensor {spec.name!r} has no known rank: Triton needs one")
            dims = [d if isinstance(d, int) else -1 for d in spec.dims]
            out.append({"name": spec.name, "data_type": TRITON_TYPES[spec.elem_type],
                        "dims": dims[1:] if max_batch_size > 0 else dims})
        return out

    inputs, outputs = tensors(signature.inputs), tensors(signature.outputs)
    text = _config_text(name, PLATFORMS[backend], max_batch_size, inputs, outputs,
                        dynamic_batching and max_batch_size > 0, preferred_batch_sizes, max_queue_delay_us,
                        instances, kind)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        (staging / str(version)).mkdir()
        io.copy_model(source, staging / str(version) / "model.onnx")
        (staging / "config.pbtxt").write_text(text)
        os.chmod(staging, 0o777 & ~_umask())
        if entry.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            os.replace(entry, old / name)
            os.replace(staging, entry)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PackageResult(entry, entry / "config.pbtxt", entry / str(version) / "model.onnx", PLATFORMS[backend],
                         max_batch_size, inputs, outputs)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _config_text(name, platform, max_batch_size, inputs, outputs, dynamic, preferred, delay_us, instances,
                 kind) -> str:
    """config.pbtxt in protobuf text format (Triton's ModelConfig); the tests parse it with Triton's own schema."""
    def tensor_block(key, items):
        lines = [f"{key} ["]
        for i, t in enumerate(items):
            lines += ["  {", f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}",
                      f"    dims: [ {', '.join(map(str, t['dims']))} ]", "  }" + ("," if i < len(items) - 1 else "")]
        return lines + ["]"]

    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    lines += tensor_block("input", inputs) + tensor_block("output", outputs)
    if dynamic:
        lines.append("dynamic_batching {")
        if preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
        if delay_us:
            lines.append(f"  max_queue_delay_microseconds: {int(delay_us)}")
        lines.append("}")
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: KIND_{kind.upper()}", "  }", "]"]
    return "\n".join(lines) + "\n"
