"""GPU code checked on the CPU against the real APIs' shapes: fakes of TensorRT's engine and execution context
with TensorRT 10's method names, return types and conventions (-1 for a dynamic dimension, a bool from
set_input_shape, DataType members with a .name), not mocks of deploykit. What needs a GPU is in test_backends.
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np
import pytest

from deploykit import BackendUnavailableError, UserInputError
from deploykit.backends import BuildOptions
from deploykit.backends.base import Runner
from deploykit.backends.ort import built_options, installed_ort_flavours
from deploykit.backends.trt import describe_io, set_input_shapes, timing_cache_path
from deploykit.runtime import check_providers_used


class DataType(enum.Enum):  # tensorrt.DataType's members (values as in TensorRT 10)
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


TRT = types.SimpleNamespace(DataType=DataType, TensorIOMode=TensorIOMode)


class FakeEngine:
    """tensorrt.ICudaEngine's I/O queries for a detector plan: a dynamic-batch image in, boxes and INT64 ids out."""

    def __init__(self, tensors):
        self.tensors = tensors  # name -> (mode, shape, dtype, (min, opt, max) profile or None)

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_shape(self, name):
        return self.tensors[name][1]  # TensorRT's Dims: -1 where the dimension is dynamic

    def get_tensor_dtype(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile_index):
        return self.tensors[name][3]


class FakeContext:
    """IExecutionContext.set_input_shape: False (not an exception) for a shape outside the profile."""

    def __init__(self, engine):
        self.engine, self.shapes = engine, {}

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            return False
        self.shapes[name] = shape
        return True


DETECTOR = FakeEngine({
    "images": (TensorIOMode.INPUT, (-1, 3, 64, 64), DataType.FLOAT, ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))),
    "boxes": (TensorIOMode.OUTPUT, (-1, 100, 4), DataType.HALF, None),
    "labels": (TensorIOMode.OUTPUT, (-1, 100), DataType.INT64, None),
})


class _PlanLikeRunner(Runner):
    def __init__(self, io_):
        self.input_names, self.input_shapes, self.input_types = io_["inputs"], io_["input_shapes"], io_["input_types"]

    def infer_impl(self, feeds):
        return [feeds["images"]]


def test_a_dynamic_batch_plan_takes_any_batch_its_runner_is_fed():
    io_ = describe_io(DETECTOR, TRT)
    assert io_["input_shapes"] == {"images": (None, 3, 64, 64)}
    runner = _PlanLikeRunner(io_)
    for batch in (1, 4, 32):  # -1 was recorded as a fixed dimension: every batch but "-1" was refused
        assert runner.infer({"images": np.zeros((batch, 3, 64, 64), np.float32)})[0].shape[0] == batch
    with pytest.raises(UserInputError, match="expects shape"):
        runner.infer({"images": np.zeros((2, 3, 32, 32), np.float32)})


def test_every_output_type_gets_its_own_buffer_type():
    io_ = describe_io(DETECTOR, TRT)
    # An INT64 output got a float32 buffer (half its size): each type is its own now.
    assert io_["numpy_types"] == {"images": "float32", "boxes": "float16", "labels": "int64"}
    bf16 = FakeEngine({"x": (TensorIOMode.INPUT, (1, 4), DataType.BF16, None)})
    with pytest.raises(UserInputError, match="BF16, which has no numpy type"):
        describe_io(bf16, TRT)


def test_a_batch_outside_the_profile_names_the_profile():
    context = FakeContext(DETECTOR)
    set_input_shapes(context, DETECTOR, {"images": (8, 3, 64, 64)})
    assert context.shapes == {"images": (8, 3, 64, 64)}
    with pytest.raises(UserInputError, match=r"64x3x64x64 is outside the plan's profile \(1x3x64x64 to 32x3x64x64\)"):
        set_input_shapes(context, DETECTOR, {"images": (64, 3, 64, 64)})


def test_timing_caches_are_kept_apart_per_tensorrt_version_and_gpu():
    h200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    l4 = {"gpu": "NVIDIA L4", "compute_capability": "8.9"}
    paths = {timing_cache_path("10.7.0", h200), timing_cache_path("10.8.0", h200), timing_cache_path("10.7.0", l4)}
    assert len(paths) == 3 and all("/" not in p.name for p in paths)


def test_a_gpu_provider_ort_silently_dropped_is_an_error():
    check_providers_used(["CUDAExecutionProvider", "CPUExecutionProvider"],
                         ["CUDAExecutionProvider", "CPUExecutionProvider"], "m.onnx")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider was asked for but ONNX Runtime did not"):
        check_providers_used(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], "m.onnx")


def test_a_runner_gets_the_options_the_artefact_was_built_with(tmp_path):
    artefact = tmp_path / "m.onnx"
    artefact.write_bytes(b"")
    built = BuildOptions(fp16=True, min_shape=(("x", (1, 3, 8, 8)),), max_shape=(("x", (16, 3, 8, 8)),))
    # The sidecar as `build` writes it (ort.py: json.dumps(..., default=list) of options.to_dict()).
    (tmp_path / "m.onnx.json").write_text(json.dumps({"options": built.to_dict()}, default=list))
    assert built_options(artefact, None) == built
    assert built_options(artefact, BuildOptions(lean_memory=True)) == BuildOptions(
        fp16=True, min_shape=built.min_shape, max_shape=built.max_shape, lean_memory=True)
    asked = BuildOptions(int8=True)
    assert built_options(artefact, asked) is asked
    assert built_options(tmp_path / "no_sidecar.onnx", None) == BuildOptions()


def test_the_onnxruntime_flavours_installed_are_seen():
    assert "onnxruntime" in installed_ort_flavours() or "onnxruntime-gpu" in installed_ort_flavours()


def test_bench_refuses_an_onnx_file_for_the_plan_runner(cli, exported):
    path, _ = exported("digits")
    result = cli("bench", path, "--backend", "trt", "--iterations", "1")
    assert result.code == 2 and "runs a TensorRT plan" in result.err and "ort-trt" in result.err


def test_io_binding_runs_the_same_model_as_run(exported):
    """The GPU runner's path (ORT I/O binding), taken on the CPU: the same outputs as run(), and its checks."""
    from deploykit import Engine, ShapeMismatchError

    path, _ = exported("digits")
    engine = Engine(path, providers="cpu")
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    bound = engine.run_bound(x, device="cpu")
    np.testing.assert_array_equal(bound[0], engine.run(x)[0])
    with pytest.raises(ShapeMismatchError):
        engine.run_bound(np.zeros((3, 1, 9, 9), np.float32), device="cpu")
