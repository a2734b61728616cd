"""One description of a model's inputs and outputs, read once and used by every verb.

A Signature holds each real input's and output's name, element type and dimensions (an int for a
fixed size, a string for a named symbolic one, None for an anonymous or `-1` one), plus the
concrete shapes deploykit recorded at export. `resolve()` turns what the user gave
(`--input-shape NAME:1,3,224,224`, repeatable, or a bare shape for a single-input model) into one
concrete shape per input, and refuses a shape the model cannot take with a message that names the
input, the expected and the given shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import UserInputError
from .shapes import format_shape, parse_shape

Dim = int | str | None
RECORDED_KEY = "input_shapes"  # metadata, "name:1,3,224,224;other:1,4"; the older "input_shape" names the first input

_ONNX_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
                  10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 4: np.uint16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int  # onnx.TensorProto data type
    dims: tuple[Dim, ...] | None  # None: rank unknown
    kind: str = "tensor_type"  # the ONNX TypeProto's kind: tensor_type, sequence_type, map_type, optional_type...

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_ONNX_TO_NUMPY.get(self.elem_type, np.float32))

    @property
    def is_float(self) -> bool:
        return self.dtype.kind == "f"

    def pretty(self) -> str:
        if self.dims is None:
            return "(any rank)"
        return format_shape(["?" if d is None else d for d in self.dims])

    def accepts(self, shape: Sequence[int]) -> str | None:
        """None when `shape` fits; else why not."""
        if self.dims is None:
            return None
        if len(shape) != len(self.dims):
            return f"it has {len(self.dims)} dimensions, the shape given has {len(shape)}"
        for i, (d, g) in enumerate(zip(self.dims, shape)):
            if isinstance(d, int) and d > 0 and d != g:
                return f"dimension {i} is fixed at {d}"
        return None


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    recorded: Mapping[str, tuple[int, ...]]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise UserInputError(f"the model has no input {name!r}; its inputs are {', '.join(self.input_names)}")

    def require_numeric_tensors(self) -> None:
        """Refuse, in one line, inputs or outputs deploykit cannot sample, measure or compare: strings, and
        values that are not tensors (sequences, maps, optionals)."""
        import onnx

        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            for spec in specs:
                if spec.elem_type == onnx.TensorProto.STRING:
                    raise UserInputError(f"{kind} {spec.name!r} holds strings: deploykit measures, optimizes and "
                                         "benchmarks numeric tensors only; run this model with ONNX Runtime directly")
                if spec.kind not in ("tensor_type", None):
                    raise UserInputError(f"{kind} {spec.name!r} is not a tensor (a sequence, map or optional): "
                                         "deploykit takes models whose inputs and outputs are tensors")

    def resolve(self, given=None) -> dict[str, tuple[int, ...]]:
        """A concrete shape for every input: the given one, else the recorded one, else the static one."""
        self.require_numeric_tensors()
        given = normalize_shapes(given, self.input_names)
        shapes = {}
        for spec in self.inputs:
            if spec.name in given:
                shape = given[spec.name]
                why = spec.accepts(shape)
                if why:
                    raise UserInputError(f"input {spec.name!r} expects shape {spec.pretty()}, got "
                                         f"{format_shape(shape)} ({why}): give a shape it accepts with --input-shape")
            elif spec.name in self.recorded and spec.accepts(self.recorded[spec.name]) is None:
                shape = self.recorded[spec.name]
            elif spec.dims is not None and all(isinstance(d, int) and d > 0 for d in spec.dims):
                shape = tuple(spec.dims)
            elif spec.dims and all(isinstance(d, int) and d > 0 for d in spec.dims[1:]):
                shape = (1, *spec.dims[1:])  # only the batch is open: one sample is a shape the model accepts
            else:
                flag = "--input-shape" if len(self.inputs) == 1 else f"--input-shape {spec.name}:..."
                raise UserInputError(f"input {spec.name!r} has dynamic dimensions {spec.pretty()} and the model records "
                                     f"no shape for it: give one with {flag}")
            shapes[spec.name] = tuple(int(v) for v in shape)
        return shapes


def normalize_shapes(given, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """A bare shape means the only input; a mapping names inputs; unknown names are refused. Text is read as
    --input-shape spells it ("1,3,224,224", "NAME:1,3,224,224"), so that the Python API takes it too."""
    if not given:
        return {}
    if isinstance(given, str):
        given = parse_shape_options([given])
    if isinstance(given, Mapping):
        out = {}
        for name, shape in given.items():
            if name is None:
                if len(names) != 1:
                    raise UserInputError(f"the model has {len(names)} inputs ({', '.join(names)}): give each shape "
                                         "as --input-shape NAME:1,3,224,224")
                name = names[0]
            if name not in names:
                raise UserInputError(f"--input-shape names {name!r}, which is not an input of the model; its inputs "
                                     f"are {', '.join(names)}")
            out[name] = tuple(shape)
        return out
    if len(names) != 1:
        raise UserInputError(f"the model has {len(names)} inputs ({', '.join(names)}): give each shape as "
                             "--input-shape NAME:1,3,224,224")
    return {names[0]: tuple(given)}


def parse_named_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """'NAME:1,3,224,224' -> ('NAME', (1, 3, 224, 224)); a bare shape has no name."""
    name, sep, rest = text.rpartition(":")
    if sep and name:
        return name, parse_shape(rest)
    return None, parse_shape(text)


def parse_shape_options(values: Sequence[str]) -> dict | None:
    """Repeated --input-shape values -> {name or None: shape}; None when none was given."""
    if not values:
        return None
    shapes: dict = {}
    for text in values:
        name, shape = parse_named_shape(text)
        if name in shapes:
            raise UserInputError(f"--input-shape given twice for {name or 'the input'}")
        shapes[name] = shape
    if None in shapes and len(shapes) > 1:
        raise UserInputError("mix of bare and NAME: shapes: name every input as --input-shape NAME:1,3,224,224")
    return shapes


def _dims(value_info) -> tuple[Dim, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)  # anonymous, or -1 as Paddle exports write it
    return tuple(dims)


def read_signature(proto) -> Signature:
    """The signature of an onnx.ModelProto (weights not needed)."""
    from . import storage

    def spec(value_info):
        return TensorSpec(value_info.name, value_info.type.tensor_type.elem_type, _dims(value_info),
                          value_info.type.WhichOneof("value"))

    inputs = tuple(spec(i) for i in storage.graph_inputs(proto))
    outputs = tuple(spec(o) for o in proto.graph.output)
    return Signature(inputs, outputs, recorded_shapes(storage.get_metadata(proto), [i.name for i in inputs]))


def recorded_shapes(metadata: Mapping[str, str], names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    if metadata.get(RECORDED_KEY):
        for part in metadata[RECORDED_KEY].split(";"):
            name, _, shape = part.rpartition(":")
            if name in names:
                out[name] = tuple(int(v) for v in shape.split(","))
    elif metadata.get("input_shape") and names:
        out[names[0]] = tuple(int(v) for v in metadata["input_shape"].split(","))
    return out


def format_recorded(shapes: Mapping[str, Sequence[int]]) -> str:
    return ";".join(f"{name}:{','.join(map(str, shape))}" for name, shape in shapes.items())


def sample_array(rng: np.random.Generator, shape, dtype: np.dtype, name: str = "") -> np.ndarray:
    """One sample input: floats N(0, 1); integers (token ids, indices) zero and booleans (masks) True,
    the only values valid for any model."""
    from .memory import check_allocation

    dtype = np.dtype(dtype)
    # numpy draws float64 and then casts: both exist at once.
    check_allocation(shape, dtype, f"the sample input{f' {name!r}' if name else ''}",
                     "give a smaller --input-shape or --batch", copies=1 + 8 / dtype.itemsize)
    if dtype.kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dtype)
    if dtype == np.bool_:
        return np.ones(tuple(shape), dtype=np.bool_)
    return np.zeros(tuple(shape), dtype=dtype)


def sample_inputs(signature: Signature, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Sample inputs at `shapes`, of each input's own type (see sample_array); give real data
    (--calibration/--validate) to see more."""
    rng = np.random.default_rng(seed)
    return {spec.name: sample_array(rng, shapes[spec.name], spec.dtype, spec.name) for spec in signature.inputs}


# Triton's names for ONNX element types: what `package --triton` writes and a trt plan's sidecar records.
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                13: "TYPE_UINT64", 16: "TYPE_BF16"}


def signature_tensors(proto) -> tuple[list[tuple], list[tuple]]:
    """An ONNX model's inputs and outputs as Triton sees them (also what a trt plan's sidecar records)."""
    signature = read_signature(proto)

    def convert(specs):
        out = []
        for spec in specs:
            if spec.elem_type not in TRITON_TYPES:
                raise UserInputError(f"tensor {spec.name!r} has an element type Triton does not know")
            if spec.dims is None:
                raise UserInputError(f"tensor {spec.name!r} has no known rank: Triton needs one")
            out.append((spec.name, TRITON_TYPES[spec.elem_type], [d if isinstance(d, int) else None for d in spec.dims]))
        return out

    return convert(signature.inputs), convert(signature.outputs)
