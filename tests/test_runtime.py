"""Engine: validation, providers, options, threads, and no torch at import."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from deploykit import BackendUnavailableError, Engine, ShapeMismatchError, UserInputError
from deploykit.feeds import as_numpy as _as_numpy
from deploykit.runtime import resolve_providers


@pytest.fixture(scope="module")
def digits_engine(exported):
    path, _ = exported("digits")
    return Engine(path, providers="cpu")


def test_same_results_from_eight_threads(exported):
    path, _ = exported("resnet18", (1, 3, 64, 64))
    engine = Engine(path, providers="cpu", intra_op_threads=1)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((2, 3, 64, 64)).astype(np.float32) for _ in range(8)]
    expected = [engine(x) for x in inputs]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        for _ in range(3):
            results[i] = engine(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_shape_errors_name_input_expected_and_actual(digits_engine):
    with pytest.raises(ShapeMismatchError, match=r"input 'input' expects shape batchx1x8x8, got 2x1x9x8"):
        digits_engine(np.zeros((2, 1, 9, 8), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"expects shape batchx1x8x8, got 1x8x8"):
        digits_engine(np.zeros((1, 8, 8), np.float32))


def test_dtype_and_name_errors(digits_engine):
    with pytest.raises(ShapeMismatchError, match="expects dtype float32, got float64"):
        digits_engine(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ShapeMismatchError, match=r"missing \['input'\], unexpected \['image'\]"):
        digits_engine(image=np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ShapeMismatchError, match="takes 1 input"):
        digits_engine(np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.float32))


def test_torch_tensor_input_without_copy(digits_engine):
    import torch

    t = torch.randn(3, 1, 8, 8)
    array = _as_numpy(t, "input")
    assert np.shares_memory(array, t.numpy())
    np.testing.assert_array_equal(digits_engine(t), digits_engine(t.numpy()))


def test_providers():
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="'cuda' is not available here"):
            resolve_providers("cuda")


def test_engine_reports_its_provider_and_takes_session_options(exported):
    path, _ = exported("digits")
    engine = Engine(path, providers="auto", intra_op_threads=1, graph_optimization_level="basic")
    assert engine.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(UserInputError, match="unknown graph optimisation level"):
        Engine(path, graph_optimization_level="max")
    lean = Engine(path, providers="cpu", lean_memory=True)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    # Without prepacked weights ORT takes other kernels: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(lean(x), engine(x), rtol=1e-5, atol=1e-5)


def test_engine_rejects_bad_files(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        Engine(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, not a model\n")
    with pytest.raises(UserInputError, match="not .*ONNX model"):
        Engine(junk)


def test_importing_engine_does_not_import_torch():
    code = "import sys, deploykit; from deploykit import Engine; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_functions_survive_submodule_imports():
    """`from deploykit import export` must be the function even after every submodule was imported."""
    code = ("import deploykit.cli, deploykit.exporter, deploykit.analysis, deploykit.optimize, deploykit.zoo\n"
            "from deploykit import export, inspect_model, optimize_model, load_zoo_model\n"
            "assert all(callable(f) for f in (export, inspect_model, optimize_model, load_zoo_model))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_on_a_directory_says_so(tmp_path):
    with pytest.raises(UserInputError, match="is a directory"):
        Engine(tmp_path)


def test_out_of_range_indices_are_a_value_error_and_print_nothing(tmp_path, capfd):
    """Shapes and types right, values wrong: said as such (not as a shape mismatch), and ORT's own log line
    does not reach stderr beside the exception."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((5, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], [table])
    path = tmp_path / "gather.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    engine = Engine(path, providers="cpu")
    capfd.readouterr()
    with pytest.raises(UserInputError, match="failed on these input values.*idx=99") as info:
        engine(np.array([[1, 2, 99]], np.int64))
    assert not isinstance(info.value, ShapeMismatchError)
    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(engine(np.array([[0, 4, 2]], np.int64)), np.ones((1, 3, 4), np.float32))


def test_renamed_names_still_work_for_one_release_with_a_warning():
    """deploykit.io, deploykit.inspect (they read like the standard library's) and deploykit.load_model (a zoo
    model, not an ONNX file) were renamed; the old names load the new objects and say so."""
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import deploykit, deploykit.storage, deploykit.analysis\n"
            "for old, new in (('deploykit.io', deploykit.storage), ('deploykit.inspect', deploykit.analysis)):\n"
            "    try:\n"
            "        __import__(old)\n"
            "    except DeprecationWarning as w:\n"
            "        assert new.__name__ in str(w), w\n"
            "    else:\n"
            "        raise AssertionError(old + ' gave no warning')\n"
            "warnings.simplefilter('ignore')\n"
            "import deploykit.io as io_alias; from deploykit.inspect import inspect_model\n"
            "assert io_alias is deploykit.storage and inspect_model is deploykit.analysis.inspect_model\n"
            "assert deploykit.load_model is deploykit.load_zoo_model\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_refuses_session_settings_an_openvino_run_would_ignore(tmp_path):
    """Session options configure ONNX Runtime; for a model OpenVINO runs they used to be dropped in silence."""
    pytest.importorskip("openvino")
    from deploykit import export

    path = tmp_path / "digits.onnx"
    export("digits", path)
    with pytest.raises(UserInputError, match="^lean_memory configure ONNX Runtime sessions and OpenVINO runs"):
        Engine(path, providers="openvino", lean_memory=True)
    with pytest.raises(UserInputError, match="graph_optimization_level"):
        Engine(path, providers="openvino", graph_optimization_level="basic")
    with Engine(path, providers="openvino", intra_op_threads=1) as engine:  # what does apply still works
        assert engine(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)
