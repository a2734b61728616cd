"""Backends: cache keys, plan compatibility, clear errors for missing GPU packages, ort-cpu builds."""

import json

import numpy as np
import onnxruntime
import pytest

from deploykit import BackendUnavailableError, Engine
from deploykit.backends import BuildOptions, cache_key, get_backend
from deploykit.backends.trt import check_plan_compatible

HAS_CUDA_EP = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
HAS_TRT_EP = "TensorrtExecutionProvider" in onnxruntime.get_available_providers()


def _has_tensorrt():
    try:
        import tensorrt  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_TRT = _has_tensorrt()


def test_cache_key_changes_with_every_input_and_only_then():
    base = dict(model_sha256="a" * 64, backend="trt", options=BuildOptions(fp16=True, opt_shape=(8, 3, 224, 224)),
                environment={"tensorrt": "10.4", "gpu": "H100", "compute_capability": "9.0"})
    key = cache_key(**base)
    assert key == cache_key(**base)
    variants = [dict(model_sha256="b" * 64), dict(backend="ort-trt"), dict(options=BuildOptions(int8=True, opt_shape=(8, 3, 224, 224))),
                dict(options=BuildOptions(fp16=True, opt_shape=(16, 3, 224, 224))),
                dict(environment={"tensorrt": "10.5", "gpu": "H100", "compute_capability": "9.0"}),
                dict(environment={"tensorrt": "10.4", "gpu": "A100", "compute_capability": "8.0"})]
    keys = {cache_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)


def test_plan_sidecar_check_names_what_differs(tmp_path):
    plan = tmp_path / "m.plan"
    built = {"tensorrt": "10.4.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    check_plan_compatible(built, "10.4.0", {"gpu": "NVIDIA H100", "compute_capability": "9.0"}, plan)
    with pytest.raises(BackendUnavailableError, match=r"built with TensorRT 10\.4\.0, this machine has 10\.5\.1.*rebuild"):
        check_plan_compatible(built, "10.5.1", {"gpu": "NVIDIA H100", "compute_capability": "9.0"}, plan)
    with pytest.raises(BackendUnavailableError, match=r"built for NVIDIA H100 \(compute capability 9\.0\), this machine has NVIDIA A100 \(8\.0\)"):
        check_plan_compatible(built, "10.4.0", {"gpu": "NVIDIA A100", "compute_capability": "8.0"}, plan)


@pytest.mark.skipif(HAS_CUDA_EP, reason="this machine has the CUDA execution provider")
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_missing_gpu_packages_are_one_clear_line(cli, exported, name):
    ok, why = get_backend(name).available()
    assert not ok and why == (f"{name} needs onnxruntime-gpu (in place of onnxruntime) and a CUDA GPU: "
                              "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
    path, _ = exported("digits")
    result = cli("bench", path, "--backend", name)
    assert result.code == 4
    assert result.err.strip() == f"error: {why}"


@pytest.mark.skipif(HAS_TRT, reason="this machine has TensorRT and a GPU")
def test_missing_tensorrt_is_one_clear_line(cli, exported, tmp_path):
    ok, why = get_backend("trt").available()
    assert not ok and why.startswith("trt needs tensorrt and a CUDA GPU: pip install 'deploykit[gpu]'")
    path, _ = exported("digits")
    result = cli("build", path, "--backend", "trt", "-o", tmp_path / "m.plan")
    assert result.code == 4 and "trt needs tensorrt" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "m.plan").exists()


def test_ort_cpu_build_is_cached_and_runs(cli, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    path, _ = exported("resnet18", (1, 3, 64, 64))
    first = cli("build", path, "--backend", "ort-cpu", "-o", tmp_path / "a.onnx")
    assert first.code == 0 and first.out.startswith("built ")
    second = cli("build", path, "--backend", "ort-cpu", "-o", tmp_path / "b.onnx")
    assert second.code == 0 and second.out.startswith("reused the cached engine")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    sidecar = json.loads((tmp_path / "a.onnx.json").read_text())
    assert sidecar["backend"] == "ort-cpu" and sidecar["environment"]["onnxruntime"] == onnxruntime.__version__
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(Engine(tmp_path / "a.onnx")(x), Engine(path)(x), rtol=1e-4, atol=1e-5)


def test_lean_memory_build_keeps_weights_in_a_side_file(cli, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    path, _ = exported("digits")
    result = cli("build", path, "--backend", "ort-cpu", "--lean-memory", "-o", tmp_path / "lean.onnx")
    assert result.code == 0, result.err
    assert (tmp_path / "lean.onnx.data").stat().st_size > (tmp_path / "lean.onnx").stat().st_size
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(Engine(tmp_path / "lean.onnx", lean_memory=True)(x), Engine(path)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and a CUDA GPU (not on this machine)")
def test_trt_plan_round_trip(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    path, _ = exported("resnet18", (1, 3, 64, 64))
    backend = get_backend("trt")
    result = backend.build(path, tmp_path / "r18.plan", BuildOptions(fp16=False))
    again = backend.build(path, tmp_path / "r18b.plan", BuildOptions(fp16=False))
    assert not result.cached and again.cached
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(Engine(tmp_path / "r18.plan")(x), Engine(path)(x), rtol=1e-2, atol=1e-2)
    # The sidecar records the signature `package --triton` writes a tensorrt_plan entry from.
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from deploykit.serving import package_triton

    entry = package_triton(tmp_path / "r18.plan", tmp_path / "repo")
    config = text_format.Parse(entry.config.read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and list(config.input[0].dims) == [3, 64, 64]
    assert entry.model_file.read_bytes() == (tmp_path / "r18.plan").read_bytes()


@pytest.mark.skipif(not HAS_TRT_EP, reason="needs onnxruntime-gpu with TensorRT and a CUDA GPU (not on this machine)")
def test_ort_trt_runs_with_profiles(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    path, _ = exported("resnet18", (1, 3, 64, 64))
    options = BuildOptions(fp16=True, min_shape=(1, 3, 64, 64), opt_shape=(4, 3, 64, 64), max_shape=(8, 3, 64, 64))
    with get_backend("ort-trt").runner(path, options) as runner:
        y = runner.infer({"input": np.zeros((4, 3, 64, 64), np.float32)})[0]
    assert y.shape == (4, 1000)


@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and a CUDA GPU (not on this machine)")
def test_trt_engine_is_safe_from_many_threads(exported, tmp_path, monkeypatch):
    """One TensorRT execution context holds a call's shapes and addresses: 8 threads with different
    batch sizes must each get their own, correct answer."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    path, _ = exported("resnet18", (1, 3, 64, 64))
    get_backend("trt").build(path, tmp_path / "t.plan", BuildOptions())
    engine, reference = Engine(tmp_path / "t.plan"), Engine(path)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 4, 3, 64, 64)).astype(np.float32) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(engine, inputs))
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, reference(x), rtol=1e-2, atol=1e-2)


def test_profile_shapes_by_input_name(tmp_path, monkeypatch):
    """--min/opt/max-shape NAME:SHAPE reach ONNX Runtime's TensorRT EP as its NAME:AxB,... strings (no GPU needed)."""
    import onnx
    from onnx import helper

    from conftest import make_model, tensor_info

    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       [tensor_info("a", ["batch", 4]), tensor_info("b", ["batch", 4])], [tensor_info("y", ["batch", 4])])
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    named = BuildOptions(min_shape=(("a", (1, 4)), ("b", (1, 4))), max_shape=(("a", (16, 4)), ("b", (16, 4))))
    opts = get_backend("ort-trt").provider_options(named, path)
    assert opts["trt_profile_min_shapes"] == "a:1x4,b:1x4"
    assert opts["trt_profile_opt_shapes"] == "a:1x4,b:1x4"  # opt falls back to min, as trtexec does
    assert opts["trt_profile_max_shapes"] == "a:16x4,b:16x4"
    bare = get_backend("ort-trt").provider_options(BuildOptions(min_shape=(2, 4)), path)
    assert bare["trt_profile_min_shapes"] == "a:2x4"  # a bare shape is the first input's


def test_one_backend_registry_that_everything_reads():
    """Every Backend class in deploykit/backends/ is registered; the CLI's --backend choices, `deploykit backends`
    and Engine's provider names are read from the registry, not restated."""
    import importlib
    import pkgutil

    import deploykit.backends as backends
    from click.testing import CliRunner

    from deploykit.backends import REGISTRY, Backend
    from deploykit.cli import cli

    classes = set()
    for info in pkgutil.iter_modules(backends.__path__):
        try:
            module = importlib.import_module(f"deploykit.backends.{info.name}")
        except ImportError:  # pragma: no cover - every backend module imports its heavy package lazily
            continue
        classes |= {v for v in vars(module).values()
                    if isinstance(v, type) and issubclass(v, Backend) and v is not Backend}
    registered = {getattr(importlib.import_module("deploykit.backends" + e.module), e.factory) for e in REGISTRY.values()}
    assert classes and classes == registered
    assert {name: type(get_backend(name)).__name__ for name in REGISTRY} == {n: e.factory for n, e in REGISTRY.items()}
    assert get_backend("ort-cuda").provider == "CUDAExecutionProvider"
    build_choices = cli.commands["build"].params[1].type.choices
    assert list(build_choices) == [n for n, e in REGISTRY.items() if e.builds] and "torch" not in build_choices
    listed = CliRunner().invoke(cli, ["backends", "--json"])
    assert [r["name"] for r in json.loads(listed.output)] == list(REGISTRY)
    assert Engine.__module__ == "deploykit.runtime"
    from deploykit.runtime import resolve_providers

    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.warns(DeprecationWarning, match="say 'tensorrt'"):
        try:
            assert resolve_providers("trt") == ["TensorrtExecutionProvider"]
        except BackendUnavailableError:  # no TensorRT provider on this machine: the warning still came first
            pass
