"""export: parity for every zoo model, dynamic axes, provenance, clean graphs, archives, atomic writes."""

import numpy as np
import onnx
import pytest
import torch

from deploykit import Engine, VerificationError, export
from deploykit.storage import get_metadata
from deploykit.zoo import load_zoo_model
from deploykit_zoo import ZOO

# The big ones at a smaller spatial size where the architecture allows (a global average pool
# head); VGG-16 and AlexNet only accept 224, and VGG-16 is exported at 224 for the inspect test too.
SHAPES = {name: ((1, 3, e.min_spatial * 2, e.min_spatial * 2) if e.min_spatial else None) for name, e in ZOO.items()}


def _torch(name, x):
    with torch.inference_mode():
        return load_zoo_model(name).module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_export_parity_for_every_zoo_model(exported, name):
    path, result = exported(name, SHAPES[name])
    assert onnx.load(str(path), load_external_data=False).graph.node
    assert result.max_rel < 1e-4
    # Independently of export's own check: a fresh Engine against a fresh PyTorch module.
    shape = SHAPES[name] or ZOO[name].input_shape
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    got, want = Engine(path, providers="cpu")(x), _torch(name, x)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_dynamic_batch_runs_at_two_sizes(exported):
    path, result = exported("resnet18", (1, 3, 64, 64))
    assert [c.input_shape[0] for c in result.checks] == [1, 3]
    engine = Engine(path, providers="cpu")
    for batch in (2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        y = engine(x)
        assert y.shape == (batch, 1000)
        np.testing.assert_allclose(y, _torch("resnet18", x), rtol=1e-4, atol=1e-4)


def test_static_batch_is_fixed(tmp_path):
    path = tmp_path / "lenet.onnx"
    result = export("lenet5", path, dynamic_batch=False)
    assert len(result.checks) == 1
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 32, 32]


def test_dynamic_spatial(tmp_path):
    path = tmp_path / "r18.onnx"
    export("resnet18", path, input_shape=(1, 3, 64, 64), dynamic_spatial=True)
    engine = Engine(path, providers="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 80)).astype(np.float32)
    np.testing.assert_allclose(engine(x), _torch("resnet18", x), rtol=1e-4, atol=1e-4)


def test_provenance_is_recorded(exported):
    path, result = exported("digits")
    meta = get_metadata(onnx.load(str(path)))
    assert meta["source"] == "zoo:digits"
    assert meta["input_shape"] == "1,1,8,8"
    assert float(meta["parity_max_rel"]) == pytest.approx(result.max_rel, rel=1e-2)
    import deploykit

    assert meta["version"] == deploykit.__version__


def test_resnet18_graph_has_batchnorm_folded_and_no_weight_arithmetic(exported):
    path, _ = exported("resnet18", (1, 3, 64, 64))
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 20
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        # Run-time weight arithmetic = a node computing only from constants.
        assert not all(i in initializers for i in node.input if i), f"{node.name} computes on weights only"
        if node.op_type == "Conv":
            assert node.input[1] in initializers and node.input[2] in initializers


def test_user_file_with_weights_and_required_shape(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*6, 5))\n"
    )
    reference = load_zoo_model(f"{src}:build").module
    weights = tmp_path / "w.pt"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "net.onnx"
    export(f"{src}:build", out, weights=str(weights), input_shape=(2, 3, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Engine(out)(x), want, rtol=1e-5, atol=1e-6)


def test_torchscript_and_torch_export_archives(tmp_path):
    net = load_zoo_model("lenet5").module
    x = torch.randn(1, 1, 32, 32)
    ts = tmp_path / "lenet.pt"
    torch.jit.trace(net, x).save(str(ts))
    pt2 = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(pt2))
    with torch.no_grad():
        want = net(x).numpy()
    for archive in (ts, pt2):
        out = tmp_path / (archive.name + ".onnx")
        export(str(archive), out, input_shape=(1, 1, 32, 32), dynamic_batch=False)
        np.testing.assert_allclose(Engine(out)(x.numpy()), want, rtol=1e-5, atol=1e-6)


def test_dynamo_exporter_option(tmp_path):
    out = tmp_path / "lenet_dynamo.onnx"
    result = export("lenet5", out, exporter="dynamo")
    assert result.max_rel < 1e-4
    assert get_metadata(onnx.load(str(out)))["exporter"] == "dynamo"


def test_failed_export_writes_nothing_and_keeps_existing_file(tmp_path):
    # A model whose traced graph freezes a Python-side random number cannot match PyTorch.
    src = tmp_path / "drift.py"
    src.write_text(
        "import random, torch.nn as nn\n"
        "class Drift(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * random.random()\n"
        "def build():\n"
        "    return Drift()\n"
    )
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous artefact")
    with pytest.raises(VerificationError, match="does not match PyTorch"):
        export(f"{src}:build", out, input_shape=(1, 3, 4, 4))
    assert out.read_bytes() == b"previous artefact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["__pycache__", "drift.py", "model.onnx"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["drift.py", "model.onnx"]
