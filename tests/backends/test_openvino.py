"""ov-cpu: OpenVINO's CPU runtime on deploykit's models, judged against ONNX Runtime on the same files."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

openvino = pytest.importorskip("openvino", reason="ov-cpu needs openvino (pip install 'deploykit[openvino]')")

from deploykit import BackendUnavailableError, Engine, ShapeMismatchError, UserInputError  # noqa: E402
from deploykit.backends import BuildOptions, build, get_backend  # noqa: E402
from deploykit.backends.openvino import has_native_bf16  # noqa: E402
from deploykit_zoo.digits_data import load_digits_split  # noqa: E402

NATIVE_BF16 = has_native_bf16()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _digits_test():
    _, _, x, y = load_digits_split()
    return x.astype(np.float32), y


@pytest.mark.parametrize("name,shape", [("digits", None), ("resnet18", (1, 3, 64, 64)), ("googlenet", (1, 3, 64, 64))])
def test_f32_matches_onnxruntime(exported, name, shape):
    path, _ = exported(name, shape)
    x = np.random.default_rng(0).standard_normal((3, *(shape or (1, 1, 8, 8))[1:])).astype(np.float32)
    reference = Engine(path)(x)
    with Engine(path, providers="openvino") as engine:
        assert engine.providers == ["OpenVINO CPU (f32)"]  # never bf16 unless asked
        assert _rel(engine(x), reference) < 1e-4


def test_build_writes_ir_that_engine_and_the_cache_reuse(exported, tmp_path):
    path, _ = exported("digits")
    x, y = _digits_test()
    first = build(path, "ov-cpu", tmp_path / "digits.xml")
    again = build(path, "ov-cpu", tmp_path / "again.xml")
    assert not first.cached and again.cached and first.key == again.key
    assert (tmp_path / "digits.bin").stat().st_size > 100_000  # the weights, in their own file
    sidecar = json.loads((tmp_path / "digits.xml.json").read_text())
    assert sidecar["precision"] == "f32"
    assert sidecar["environment"]["openvino"] == openvino.__version__
    with open("/proc/cpuinfo") as fh:
        flags = set(next(l for l in fh if l.startswith("flags")).split(":", 1)[1].split())
    assert set(sidecar["environment"]["cpu_flags"]) <= flags and sidecar["environment"]["cpu_flags"]
    with Engine(tmp_path / "digits.xml") as engine:
        predicted = engine(x).argmax(1)
    assert np.array_equal(predicted, Engine(path)(x).argmax(1))
    with pytest.raises(ShapeMismatchError, match="expects shape"):
        Engine(tmp_path / "digits.xml")(np.zeros((2, 1, 9, 8), np.float32))
    engine = Engine(tmp_path / "digits.xml")
    engine.close()
    with pytest.raises(UserInputError, match="closed"):
        engine(x[:1])


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AVX512_BF16 or AMX)")
def test_bf16_keeps_digits_accuracy_and_has_its_own_cache_key(exported, tmp_path):
    path, _ = exported("digits")
    x, y = _digits_test()
    f32 = build(path, "ov-cpu", tmp_path / "f32.xml")
    bf16 = build(path, "ov-cpu", tmp_path / "bf16.xml", BuildOptions(bf16=True))
    assert bf16.key != f32.key and bf16.details["precision"] == "bf16"
    float_accuracy = float(np.mean(Engine(path)(x).argmax(1) == y))
    with Engine(tmp_path / "bf16.xml") as engine:
        assert engine.providers == ["OpenVINO CPU (bf16)"]
        out = engine(x)
    assert float(np.mean(out.argmax(1) == y)) >= float_accuracy - 0.01
    # bf16 keeps 8 bits of mantissa: it moves the logits, but by far less than their range
    deviation = _rel(out, Engine(path)(x))
    assert 0 < deviation < 0.05


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has native bf16: the refusal is for CPUs without it")
def test_bf16_refused_without_native_support(exported, tmp_path, cli):
    path, _ = exported("digits")
    result = cli("build", path, "--backend", "ov-cpu", "--bf16", "-o", tmp_path / "x.xml")
    assert result.code == 4 and "no native bf16" in result.err
    assert not (tmp_path / "x.xml").exists()


def test_int8_qdq_model_runs_in_int8_with_digits_accuracy(exported, tmp_path):
    from deploykit.optimize import optimize_model

    path, _ = exported("digits")
    quantized = tmp_path / "int8.onnx"
    optimize_model(path, quantized, int8=True, calibration="digits")
    x, y = _digits_test()
    float_accuracy = float(np.mean(Engine(path)(x).argmax(1) == y))
    with Engine(quantized, providers="openvino") as engine:
        assert engine.providers == ["OpenVINO CPU (int8)"]
        accuracy = float(np.mean(engine(x).argmax(1) == y))
    assert accuracy >= float_accuracy - 0.01
    built = build(quantized, "ov-cpu", tmp_path / "int8.xml", BuildOptions(int8=True))
    assert built.details["precision"] == "int8"


def test_one_engine_from_eight_threads(exported):
    path, _ = exported("resnet18", (1, 3, 64, 64))
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 3, 64, 64)).astype(np.float32) for _ in range(8)]
    engine = Engine(path, providers="openvino")
    expected = [engine(b) for b in batches]
    got = [None] * 8

    def work(i):
        for _ in range(3):
            got[i] = engine(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)


def test_cli_build_bench_and_refusals(exported, tmp_path, cli):
    path, _ = exported("digits")
    result = cli("build", path, "--backend", "ov-cpu", "-o", tmp_path / "d.xml")
    assert result.code == 0 and "(f32)" in result.out, result.err
    result = cli("bench", path, "--backend", "ort-cpu", "--backend", "ov-cpu", "--batch", "1", "--iterations", "5",
                 "--warmup", "1", "--json")
    assert result.code == 0, result.err
    assert {r["backend"] for r in json.loads(result.out)["results"]} == {"ort-cpu", "ov-cpu"}
    result = cli("bench", tmp_path / "d.xml", "--batch", "2", "--iterations", "3", "--warmup", "1")
    assert result.code == 0 and "ov-cpu" in result.out, result.err
    for args, message in [(("--int8",), "no QuantizeLinear"), ((), "name the output MODEL.xml")]:
        out = tmp_path / ("q.xml" if args else "d.onnx")
        result = cli("build", path, "--backend", "ov-cpu", *args, "-o", out)
        assert result.code == 2 and message in result.err and not out.exists()
    result = cli("build", path, "--backend", "ort-cpu", "--bf16", "-o", tmp_path / "o.onnx")
    assert result.code == 2 and "--backend ov-cpu" in result.err
    with pytest.raises(UserInputError, match="precision= applies to OpenVINO"):
        Engine(path, precision="bf16")


def test_backend_is_listed_and_checks_itself():
    backend = get_backend("ov-cpu")
    assert backend.available() == (True, "")
    env = backend.environment()
    assert env["openvino"] == openvino.__version__
    with pytest.raises(UserInputError, match="no fp16 on the CPU"):
        backend.precision(BuildOptions(fp16=True))
    if not NATIVE_BF16:
        with pytest.raises(BackendUnavailableError):
            backend.precision(BuildOptions(bf16=True))
