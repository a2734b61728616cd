"""Named inputs: the one table of ONNX Runtime's type strings, checking feeds against a declared signature,
and running them in batches. A leaf: every layer above (backends, Engine, validation, calibration) uses it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .errors import ShapeMismatchError, UserInputError

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32, "tensor(uint32)": np.uint32, "tensor(int64)": np.int64, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def validate_feeds(label: str, declared, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check feeds against declared (name, shape, ORT type string) inputs; numpy arrays back, by name."""
    names = [name for name, _, _ in declared]
    if not isinstance(feeds, Mapping):
        raise ShapeMismatchError(f"{label} takes a mapping of input name to array, got {type(feeds).__name__}")
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise ShapeMismatchError(f"{label} expects inputs {names}; missing {missing}, unexpected {extra}")
    checked = {}
    for name, shape, type_str in declared:
        array = as_numpy(feeds[name], name)
        expected_dtype = ORT_DTYPES.get(type_str)
        if expected_dtype is not None and array.dtype != expected_dtype:
            raise ShapeMismatchError(
                f"input {name!r} expects dtype {np.dtype(expected_dtype).name}, got {array.dtype.name}: "
                f"convert it, e.g. x.astype(np.{np.dtype(expected_dtype).name})")
        if shape is not None and len(shape) != array.ndim or shape is not None and any(
            isinstance(d, int) and d != a for d, a in zip(shape, array.shape)
        ):
            raise ShapeMismatchError(
                f"input {name!r} expects shape {pretty_shape(shape)}, got {'x'.join(map(str, array.shape))}")
        checked[name] = array
    check_shared_dims(declared, checked)
    return checked


def pretty_shape(shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape)


def check_shared_dims(declared, arrays: Mapping[str, np.ndarray]) -> None:
    """Inputs that share a named dimension (two inputs' "batch") must agree on its size."""
    seen: dict[str, tuple[str, int]] = {}
    for name, shape, _ in declared:
        for axis, dim in enumerate(shape or ()):
            if not isinstance(dim, str) or not dim or dim == "?":
                continue  # '?' is how some exporters spell an unknown dimension: it names nothing shared
            size = arrays[name].shape[axis]
            if dim in seen and seen[dim][1] != size:
                other, other_size = seen[dim]
                raise ShapeMismatchError(f"input {name!r} has {dim}={size} (dimension {axis}) but input {other!r} has "
                                         f"{dim}={other_size}: inputs sharing the dimension {dim!r} must agree")
            seen.setdefault(dim, (name, size))


def as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        return tensor.numpy()  # shares memory with a contiguous CPU tensor
    try:
        return np.asarray(value)
    except Exception:
        raise ShapeMismatchError(f"input {name!r} must be a numpy array or torch tensor, got {type(value).__name__}") from None


BATCH = 16  # samples per run: bounds the memory of one inference on large inputs


def declared_inputs(runner) -> dict[str, tuple]:
    """{name: (shape, ORT type string)} of an ONNX Runtime session's, a deploykit Engine's or a backend Runner's
    inputs."""
    if hasattr(runner, "get_inputs"):
        return {i.name: (tuple(i.shape), i.type) for i in runner.get_inputs()}
    return {name: (shape, type_) for name, shape, type_ in runner.inputs}


def batches(runner, feeds: dict[str, np.ndarray], batch: int = BATCH):
    """The feeds for `runner` (an ORT session or an Engine), `batch` samples at a time (the model's own batch
    where every input is fixed), cast to the types it takes.

    Only inputs with a batch dimension are sliced: where some inputs have a dynamic first dimension,
    those carry the samples and the rest (a scalar sample rate, a fixed-size state) go whole to every run;
    where every input is fixed, the model's own batch is the step."""
    inputs = declared_inputs(runner)
    given = {n: a for n, a in feeds.items() if n in inputs}

    def open_first(name):
        shape = inputs[name][0]
        return bool(shape) and not (isinstance(shape[0], int) and shape[0] > 0)

    sliced = [n for n, a in given.items() if a.ndim and open_first(n)]
    fixed = None
    if not sliced:
        sliced = [n for n, a in given.items() if a.ndim and inputs[n][0]]
        fixed = next((inputs[n][0][0] for n in sliced), None)
    step = fixed or batch
    total = len(given[sliced[0]]) if sliced else 1
    if fixed and total < fixed:
        raise UserInputError(f"the model's batch is fixed at {fixed}: give at least {fixed} validation samples")
    for start in range(0, total - (total % step if fixed else 0), step):
        yield {n: (a[start:start + step] if n in sliced else a).astype(ORT_DTYPES.get(inputs[n][1], a.dtype),
                                                                        copy=False)
               for n, a in given.items()}
