"""OrtLayoutPass: ORT's own CPU layout baked in, exact, and refused on a CPU it was not built for."""

import numpy as np
import onnx
import pytest

from deploykit import BackendUnavailableError, Engine
from deploykit.optimize import optimize_model
from deploykit.passes.ort_layout import META_CPU


def test_baked_layout_is_exact_and_runs_without_optimisation(exported, tmp_path):
    path, _ = exported("resnet18", (1, 3, 64, 64))
    out = tmp_path / "layout.onnx"
    report = optimize_model(path, out, ort_layout=True)
    assert report.passes[-1].name == "ort-layout" and report.passes[-1].step_max_rel <= 1e-5
    model = onnx.load(str(out))
    assert any(n.domain == "com.microsoft.nchwc" for n in model.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    baked = Engine(out, providers="cpu", graph_optimization_level="disable")(x)
    np.testing.assert_allclose(baked, Engine(path, providers="cpu")(x), rtol=1e-4, atol=1e-5)


def test_engine_refuses_a_layout_built_for_another_cpu(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "layout.onnx"
    optimize_model(path, out, ort_layout=True)
    model = onnx.load(str(out))
    for p in model.metadata_props:
        if p.key == META_CPU:
            p.value += ",avx9000"  # an extension no CPU has
    onnx.save_model(model, str(out))
    with pytest.raises(BackendUnavailableError, match="for a CPU with avx9000, which this CPU lacks"):
        Engine(out)


def test_ort_layout_needs_the_ort_target(cli, exported, tmp_path):
    path, _ = exported("digits")
    result = cli("optimize", path, "-o", tmp_path / "x.onnx", "--ort-layout", "--target", "tensorrt")
    assert result.code == 2 and "needs --target ort" in result.err


def test_inspect_explains_it_cannot_read_the_baked_layout(cli, exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "layout.onnx"
    optimize_model(path, out, ort_layout=True)
    result = cli("inspect", out)
    assert result.code == 2 and "inspect the model from before that step" in result.err
