"""deploykit package --triton: entries Triton's own schema accepts, dims that match the model, atomic and careful.

config.pbtxt is parsed with protobuf's text_format into ModelConfig from tritonclient (Triton's own
schema): a field Triton does not know fails the parse.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is in the test extra")

from deploykit import Engine  # noqa: E402


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_dynamic_batch_model_gets_batching_and_dims_without_the_batch(cli, exported, tmp_path):
    path, _ = exported("digits")
    repo = tmp_path / "repo"
    result = cli("package", path, "--triton", repo, "--name", "digits", "--preferred-batch-size", "4",
                 "--max-queue-delay-us", "500", "--instances", "2")
    assert result.code == 0, result.err
    config = _config(repo / "digits" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [1, 8, 8]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.output[0].dims) == [10]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    # The versioned model is the same model.
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(Engine(repo / "digits" / "1" / "model.onnx")(x), Engine(path)(x))
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]


def test_two_input_fixed_batch_and_int64_types(cli, tmp_path):
    from onnx import TensorProto, helper

    from conftest import make_model, tensor_info

    model = make_model([helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
                        helper.make_node("Add", ["ids_f", "image"], ["y"])],
                       [tensor_info("ids", [2, 4], TensorProto.INT64), tensor_info("image", [2, "width"])],
                       [tensor_info("y", [2, 4])])
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    repo = tmp_path / "repo"
    refused = cli("package", path, "--triton", repo, "--max-batch-size", "4")
    assert refused.code == 2 and "fixed batch dimension" in refused.err
    assert cli("package", path, "--triton", repo).code == 0
    config = _config(repo / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    inputs = {i.name: i for i in config.input}
    assert inputs["ids"].data_type == model_config_pb2.TYPE_INT64 and list(inputs["ids"].dims) == [2, 4]
    assert list(inputs["image"].dims) == [2, -1]


def test_existing_entry_is_refused_unless_forced_and_replaced_whole(cli, exported, tmp_path):
    path, _ = exported("digits")
    repo = tmp_path / "repo"
    (repo / "digits" / "7").mkdir(parents=True)
    (repo / "digits" / "config.pbtxt").write_text("name: \"someone else\"\n")
    refused = cli("package", path, "--triton", repo, "--name", "digits")
    assert refused.code == 2 and "--force" in refused.err
    assert (repo / "digits" / "config.pbtxt").read_text() == "name: \"someone else\"\n"
    assert cli("package", path, "--triton", repo, "--name", "digits", "--force").code == 0
    assert sorted(p.name for p in (repo / "digits").iterdir()) == ["1", "config.pbtxt"]
    assert _config(repo / "digits" / "config.pbtxt").name == "digits"


def test_external_data_travels_with_the_entry(cli, exported, tmp_path):
    path, _ = exported("digits")
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(onnx.load(str(path)), str(src / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    repo = tmp_path / "repo"
    assert cli("package", src / "ext.onnx", "--triton", repo).code == 0
    assert (repo / "ext" / "1" / "model.onnx.data").exists()
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(Engine(repo / "ext" / "1" / "model.onnx")(x), Engine(path)(x), rtol=1e-6)


def test_openvino_entry_from_onnx_and_from_an_ov_cpu_artefact(cli, exported, tmp_path):
    path, _ = exported("digits")
    repo = tmp_path / "repo"
    result = cli("package", path, "--triton", repo, "--name", "ov", "--backend", "openvino")
    assert result.code == 0, result.err
    config = _config(repo / "ov" / "config.pbtxt")
    assert config.backend == "openvino" and not config.platform and config.max_batch_size == 8
    assert list(config.input[0].dims) == [1, 8, 8] and list(config.output[0].dims) == [10]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    x = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    reference = Engine(path)(x)
    np.testing.assert_allclose(Engine(repo / "ov" / "1" / "model.xml")(x), reference, rtol=1e-4, atol=1e-5)

    built = tmp_path / "digits.xml"
    assert cli("build", path, "--backend", "ov-cpu", "-o", built).code == 0
    result = cli("package", built, "--triton", repo, "--name", "ov_built")
    assert result.code == 0, result.err  # .xml implies the openvino backend
    config = _config(repo / "ov_built" / "config.pbtxt")
    assert config.backend == "openvino" and [i.name for i in config.input] == ["input"]
    assert list(config.input[0].dims) == [1, 8, 8]
    assert (repo / "ov_built" / "1" / "model.bin").read_bytes() == built.with_suffix(".bin").read_bytes()
    refused = cli("package", path, "--triton", repo, "--name", "ov_gpu", "--backend", "openvino", "--kind", "gpu")
    assert refused.code == 2 and "CPU only" in refused.err and not (repo / "ov_gpu").exists()


def test_gpu_entry_with_the_tensorrt_accelerator_is_valid_for_triton(cli, exported, tmp_path):
    path, _ = exported("digits")
    repo = tmp_path / "repo"
    result = cli("package", path, "--triton", repo, "--kind", "gpu", "--gpu-accelerator", "tensorrt-fp16")
    assert result.code == 0, result.err
    config = _config(repo / path.stem / "config.pbtxt")
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    refused = cli("package", path, "--triton", tmp_path / "other", "--gpu-accelerator", "tensorrt")
    assert refused.code == 2 and "--kind gpu" in refused.err


def test_tensorrt_plan_entry_takes_its_signature_from_the_build_sidecar(cli, exported, tmp_path):
    """package never reads a plan's bytes (Triton does, on the GPU node): its config comes from the sidecar
    `build --backend trt` writes. Building a real plan needs a GPU (tests/backends: skipped here), so the
    sidecar's signature is recorded by the same function the build uses, beside placeholder plan bytes."""
    import json

    from deploykit.backends.trt import recorded_signature, sidecar_path

    path, _ = exported("digits")
    plan = tmp_path / "digits.plan"
    plan.write_bytes(b"placeholder: package copies a plan, it never parses one")
    repo = tmp_path / "repo"
    refused = cli("package", plan, "--triton", repo)
    assert refused.code == 2 and "no recorded signature" in refused.err and not repo.exists()
    sidecar_path(plan).write_text(json.dumps({"signature": recorded_signature(path)}))
    result = cli("package", plan, "--triton", repo, "--max-batch-size", "16")
    assert result.code == 0, result.err
    config = _config(repo / "digits" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.input[0].dims) == [1, 8, 8] and list(config.output[0].dims) == [10]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "digits" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    refused = cli("package", plan, "--triton", repo, "--name", "cpu_plan", "--kind", "cpu")
    assert refused.code == 2 and "GPU only" in refused.err
