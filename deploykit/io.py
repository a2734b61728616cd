"""Loading and saving ONNX models: the one protobuf boundary, and atomic writes.

Nothing deploykit writes is ever left half-written: every file goes to a temporary
name in the destination directory and is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserInputError

METADATA_PREFIX = "deploykit."
# Protobuf cannot serialise a message over 2 GiB: larger models keep weights in a side file.
_PROTOBUF_LIMIT = 2**31 - 1


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when the output cannot be written."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UserInputError(f"output path {out} is a directory: give a file name such as {out / 'model.onnx'}")
    if not parent.is_dir():
        raise UserInputError(f"cannot write {out}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write {out}: directory {parent} is not writable; choose another -o path")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    out = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise UserInputError(
            f"{p} is not a readable ONNX model (truncated or another format: {type(exc).__name__}); "
            "re-export it with 'deploykit export'"
        ) from exc
    # Arbitrary bytes sometimes decode as a protobuf message without error; a real model has an
    # opset and at least one graph output.
    if not model.opset_import or not model.graph.output:
        raise UserInputError(f"{p} is not an ONNX model (no opset or graph outputs); re-export it with 'deploykit export'")
    return model


def save_model(model, path: str | os.PathLike, external_weights: bool = False) -> Path:
    """Save a ModelProto atomically.

    Weights go to a side file named PATH.data when asked (ONNX Runtime then maps them instead of
    copying them: see Engine's lean_memory) or when the model exceeds protobuf's 2 GiB limit.
    """
    import onnx

    out = check_output_path(path)
    with atomic_path(out) as tmp:
        if external_weights or model.ByteSize() > _PROTOBUF_LIMIT:
            data_name = out.name + ".data"
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
    return out


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
