"""Loading and saving ONNX models: the one protobuf boundary, and atomic writes.

Nothing deploykit writes is ever left half-written: every file goes to a temporary
name in the destination directory and is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserInputError

METADATA_PREFIX = "deploykit."
# Where `optimize --recipe fast` records the engine and precision it chose; Engine reads them back.
DEPLOYMENT_ENGINE_KEY = METADATA_PREFIX + "engine"
DEPLOYMENT_PRECISION_KEY = METADATA_PREFIX + "precision"
# Protobuf cannot serialise a message over 2 GiB: larger models keep weights in a side file.
_PROTOBUF_LIMIT = 2**31 - 1


# Files that look writable to root but are not real storage.
_VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")
# Outputs this process has fully written (renamed into place): an interrupted command reports them.
WRITTEN: list[Path] = []
# Temporaries (files, or staging folders) that exist right now: removed by `remove_pending` when a
# signal has to end the process without unwinding the stack (see cli._on_unraisable).
PENDING: set[Path] = set()


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    PENDING.discard(tmp)


def remove_pending() -> None:
    for tmp in list(PENDING):
        _remove(tmp)


@contextlib.contextmanager
def temporary(path: Path) -> Iterator[Path]:
    """`path` (a temporary file or folder that exists) held in PENDING while the block runs, removed after
    it, whether the block succeeded or not: what it should keep, it renames away first."""
    PENDING.add(path)
    try:
        yield path
    finally:
        _remove(path)


def check_output_path(path: str | os.PathLike, inputs=()) -> Path:
    """Fail early, before any work, when the output cannot be written or would replace one of `inputs`."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX") if parent.is_dir() else 255
    except (OSError, ValueError):
        name_max = 255
    if len(out.name.encode()) > name_max:
        raise UserInputError(f"cannot write {out.name[:40]}...: the file name is {len(out.name.encode())} bytes, more "
                             f"than this file system's {name_max}; choose a shorter -o name")
    if out.is_dir():
        raise UserInputError(f"output path {out} is a directory: give a file name such as {out / 'model.onnx'}")
    resolved = Path(os.path.abspath(out))
    if any(str(resolved) == root or str(resolved).startswith(root + "/") for root in _VIRTUAL_ROOTS):
        raise UserInputError(f"cannot write {out}: it is under {resolved.parts[1] and '/' + resolved.parts[1]}, "
                             "a virtual file system, not storage; choose another -o path")
    if not parent.is_dir():
        blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserInputError(f"cannot write {out}: {blocker} is a file, not a directory; choose another -o path")
        raise UserInputError(f"cannot write {out}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write {out}: directory {parent} is not writable; choose another -o path")
    for source in inputs:
        if source is not None and same_file(out, source):
            raise UserInputError(f"output {out} is the input {source}: deploykit never writes over its inputs; "
                                 "give another output path")
    return out


_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "not permitted", errno.ENAMETOOLONG: "the name is too long"}


def storage_error(exc: OSError) -> UserInputError | None:
    """The one-line error for a write the file system refused (full, read-only, no permission), else None."""
    why = _STORAGE_ERRNOS.get(exc.errno)
    if why is None:
        return None
    where = exc.filename or "the output"
    return UserInputError(f"cannot write {where}: {why} ({exc.strerror}); free some space or choose another output "
                          "path; nothing was written")


def _short(name: str) -> str:
    """A temporary's stem: the output's name cut so that prefix + random part + suffix stay within NAME_MAX."""
    return name[:100]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two spellings name one file (symlinks, hard links, ./ and ../ included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare what they would resolve to
        return Path(a).resolve() == Path(b).resolve()


def model_files(path: str | os.PathLike) -> list[Path]:
    """An ONNX file and the external data files it references: everything a verb reading it must not overwrite."""
    p = Path(path)
    files = [p]
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        proto = onnx.load(str(p), load_external_data=False)
        for tensor in _get_all_tensors(proto):
            if uses_external_data(tensor):
                location = next((e.value for e in tensor.external_data if e.key == "location"), None)
                if location:
                    files.append(p.parent / location)
    except Exception:  # unreadable models are reported by load_model, with the right message
        pass
    return list(dict.fromkeys(files))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs=()) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The file gets the permissions open() would give it (0666 less the umask), not mkstemp's 0600:
    a serving process running as another user must be able to read the model.
    """
    out = check_output_path(path, inputs)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_short(out.name)}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    with temporary(Path(tmp_name)) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, out)
        WRITTEN.append(out)


def load_model(path: str | os.PathLike, load_weights: bool = True):
    """Load an ONNX ModelProto with a one-line error for every way the file can be wrong."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise UserInputError(f"model file {p} does not exist")
    if p.is_dir():
        raise UserInputError(f"{p} is a directory, not an ONNX model file")
    if p.stat().st_size == 0:
        raise UserInputError(f"{p} is empty: it is not an ONNX model; re-export it with 'deploykit export'")
    try:
        model = onnx.load(str(p), load_external_data=load_weights)
    except onnx.checker.ValidationError as exc:  # an external data file is missing or outside the folder
        first = str(exc).strip().splitlines()[0]
        raise UserInputError(f"{p}: its weights cannot be read ({first}); keep the model's external data "
                             "file(s) next to it") from exc
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise UserInputError(
            f"{p} is not a readable ONNX model (truncated or another format: {type(exc).__name__}); "
            "re-export it with 'deploykit export'"
        ) from exc
    # Arbitrary bytes sometimes decode as a protobuf message without error; a real model has an
    # opset and at least one graph output.
    if not model.opset_import or not model.graph.output:
        raise UserInputError(f"{p} is not an ONNX model (no opset or graph outputs); re-export it with 'deploykit export'")
    if not load_weights:
        missing = [f for f in model_files(p)[1:] if not f.is_file()]
        if missing:
            raise UserInputError(f"{p}: its weights cannot be read (external data file {missing[0]} is missing); keep "
                                 "the model's external data file(s) next to it")
    return model


def save_model(model, path: str | os.PathLike, external_weights: bool = False, inputs=()) -> Path:
    """Save a ModelProto atomically.

    Weights go to a side file named PATH.data when asked (ONNX Runtime then maps them instead of
    copying them: see Engine's lean_memory) or when the model exceeds protobuf's 2 GiB limit. The
    model and its side file are written in a private folder beside PATH and renamed into place, the
    side file first, so no reader ever sees a model whose weights are half-written.
    """
    import onnx

    out = check_output_path(path, inputs)
    if not (external_weights or model.ByteSize() > _PROTOBUF_LIMIT):
        with atomic_path(out, inputs) as tmp:
            onnx.save_model(model, str(tmp))
        return out
    data_name = out.name + ".data"
    check_output_path(out.parent / data_name, inputs)
    return _staged_write(out, lambda target: onnx.save_model(
        model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
        size_threshold=1024))


def _staged_write(out: Path, write) -> Path:
    """`write(path)` into a private folder beside `out`, then its files renamed into place, the side file
    (OUT.data) before the model, so no reader sees a model whose weights are half-written."""
    with temporary(Path(tempfile.mkdtemp(prefix=f".{_short(out.name)}.", suffix=".tmp", dir=out.parent))) as staging:
        write(staging / out.name)
        mode = 0o666 & ~current_umask()
        for name in (out.name + ".data", out.name):
            if (staging / name).exists():
                os.chmod(staging / name, mode)
                os.replace(staging / name, out.parent / name)
        WRITTEN.append(out)
    return out


def save_ir_model(model, path: str | os.PathLike, inputs=(), metadata: dict | None = None) -> Path:
    """Save an onnx_ir Model atomically, streaming its weights: no second protobuf copy of them is made.

    A model whose weights pass protobuf's 2 GiB limit gets a side file PATH.data, written and renamed
    into place before the model, as save_model does; a smaller one is one file.
    """
    import onnx_ir as ir

    out = check_output_path(path, inputs)
    if metadata:
        for key, value in metadata.items():
            model.metadata_props[METADATA_PREFIX + key] = str(value)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data_name = out.name + ".data"
    external = weight_bytes > _PROTOBUF_LIMIT // 2  # the graph and its small tensors must fit beside them
    if external:
        check_output_path(out.parent / data_name, inputs)
    if external:
        return _staged_write(out, lambda target: ir.save(model, target, external_data=data_name,
                                                         size_threshold_bytes=1024))
    return _staged_write(out, lambda target: _save_streamed(model, target))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_GRAPH_FIELD = bytes([7 << 3 | 2])  # ModelProto.graph, length-delimited
_INITIALIZER_FIELD = bytes([5 << 3 | 2])  # GraphProto.initializer, length-delimited


def _save_streamed(model, path: Path, large: int = 1 << 20) -> None:
    """One-file ONNX written tensor by tensor: ir.save builds the whole protobuf and then its bytes,
    two extra copies of the weights (VGG-16: 3.5 GB peak for 528 MB).

    Protobuf lets a message's fields come in any order and a repeated field in pieces, so the file is
    the model without its large initializers, with the graph's length grown by each initializer's
    field, followed by those fields. A plain numeric tensor's field is encoded here around its numpy
    buffer, with no copy; any other goes through onnx_ir's serialiser. onnx.load reads it as usual.
    """
    import onnx_ir as ir

    graph = model.graph
    detached = {name: v for name, v in graph.initializers.items()
                if v.const_value is not None and v.const_value.nbytes > large}
    for name in detached:
        graph.initializers.pop(name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, value in detached.items():
            graph.initializers[name] = value
    graph_bytes = proto.graph.SerializeToString()
    proto.ClearField("graph")
    fields = [_tensor_field(name, value.const_value) for name, value in detached.items()]
    length = len(graph_bytes) + sum(len(head) + len(payload) for head, payload in fields)
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
        fh.write(_GRAPH_FIELD + _varint(length))
        fh.write(graph_bytes)
        for head, payload in fields:
            fh.write(head)
            fh.write(payload)


# Element types whose raw_data is the numpy buffer itself (little-endian, one element per item).
_PLAIN_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _tensor_field(name: str, tensor) -> tuple[bytes, memoryview | bytes]:
    """(GraphProto.initializer tag + length + TensorProto fields before raw_data, the raw bytes)."""
    import sys

    import numpy as np
    import onnx_ir as ir

    data_type = int(tensor.dtype)
    array = tensor.numpy() if data_type in _PLAIN_TYPES and sys.byteorder == "little" else None
    if array is None or array.dtype != np.dtype(_PLAIN_TYPES[data_type]) or not array.flags.c_contiguous:
        message = ir.serde.serialize_tensor(tensor)
        message.name = name
        body = message.SerializeToString()
        return _INITIALIZER_FIELD + _varint(len(body)), body
    payload = memoryview(array).cast("B")
    encoded_name = name.encode()
    fields = b"".join(b"\x08" + _varint(d) for d in array.shape)  # dims (1), varint
    fields += b"\x10" + _varint(data_type)  # data_type (2)
    fields += b"\x42" + _varint(len(encoded_name)) + encoded_name  # name (8)
    fields += b"\x4a" + _varint(len(payload))  # raw_data (9), the bytes follow
    return _INITIALIZER_FIELD + _varint(len(fields) + len(payload)) + fields, payload


def has_external_data(path: str | os.PathLike) -> bool:
    return len(model_files(path)) > 1


def copy_model(source: str | os.PathLike, destination: str | os.PathLike, inputs=()) -> Path:
    """Copy an ONNX model with its external data, which then sits beside `destination` as DESTINATION.data."""
    if has_external_data(source):
        return save_model(load_model(source), destination, external_weights=True, inputs=inputs)
    with atomic_path(destination, inputs) as tmp:
        shutil.copyfile(source, tmp)
    return Path(destination)


def graph_inputs(proto) -> list:
    """The model's real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    initializer_names = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializer_names]


def get_metadata(model) -> dict[str, str]:
    """deploykit's provenance entries from metadata_props, without the prefix."""
    return {
        p.key[len(METADATA_PREFIX):]: p.value
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }


def set_metadata(model, entries: dict[str, object]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        full = METADATA_PREFIX + key
        if full in existing:
            existing[full].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = full, str(value)


def float_precision(precision: str) -> str | None:
    """What OpenVINO runs the float layers of an artefact recorded at `precision` in: f32 or bf16, or None for
    its default (f32, with an int8 model's Q/DQ pairs in int8). "int8+bf16" is an int8 model whose layers left
    in float run in bf16."""
    if precision in ("f32", "bf16"):
        return precision
    return "bf16" if precision.endswith("+bf16") else None
