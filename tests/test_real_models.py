"""The real-model corpus: networks built from the blocks real CNNs use, through every verb, judged against PyTorch.

The models (tests/models/blocks.py) are written as a user would write them and are loaded as a
user's file.py:factory; nothing in deploykit knows them. Each goes export -> inspect -> optimize
(default, fp16, int8 with every calibration method, bottleneck) -> Engine, and the outputs are
compared with the PyTorch module's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploykit import Engine, UserInputError, export, inspect_model
from deploykit.optimize import optimize_model
from deploykit.zoo import count_macs, load_zoo_model

BLOCKS = Path(__file__).parent / "models" / "blocks.py"
SINGLE_INPUT = ["mobilenet_like", "shufflenet_like", "convnext_like", "vit_like"]
SHAPE = (1, 3, 32, 32)


def _torch_outputs(name, x):
    module = load_zoo_model(f"{BLOCKS}:{name}").module
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    paths = {}
    for name in SINGLE_INPUT + ["loud"]:
        paths[name] = root / f"{name}.onnx"
        export(f"{BLOCKS}:{name}", paths[name], input_shape=SHAPE)
    rng = np.random.default_rng(0)
    calibration = root / "calibration.npy"
    np.save(calibration, rng.standard_normal((10, *SHAPE[1:])).astype(np.float32))
    validation = root / "validation.npz"
    np.savez(validation, x=rng.standard_normal((12, *SHAPE[1:])).astype(np.float32))
    return root, paths, calibration, validation


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_inspect_works_on_graphs_that_compute_shapes(corpus, name):
    _, paths, _, _ = corpus
    report = inspect_model(paths[name])
    assert report.layers and report.totals.peak_activation_bytes > 0
    module = load_zoo_model(f"{BLOCKS}:{name}").module
    if name != "vit_like":  # attention's MatMuls are MACs the Conv/Linear hooks do not see
        assert report.totals.macs == count_macs(module, SHAPE)
    # BatchNorm folded at export: the graph has the torch parameters less BN's four vectors per layer.
    bn = sum(4 * m.num_features for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch_params = sum(p.numel() for p in module.parameters())
    # (The exporter also merges identical untrained tensors, e.g. LayerNorms' all-ones scales: hence 0.98.)
    assert 0.98 * (torch_params - bn) <= report.totals.params <= torch_params


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_default_passes_equal_pytorch(corpus, tmp_path, name):
    _, paths, _, validation = corpus
    out = tmp_path / "opt.onnx"
    report = optimize_model(paths[name], out, validate=str(validation))
    assert report.validation_data.startswith("validation data") and "12 samples" in report.validation_data
    assert all(p.max_rel <= 1e-4 for p in report.passes)
    x = np.random.default_rng(1).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    np.testing.assert_allclose(Engine(out)(x), _torch_outputs(name, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_fp16_holds_on_every_block(corpus, tmp_path, name):
    """fp16 (ReLU6, hardswish, exact GELU, LayerNorm, attention: scalar constants everywhere) stays close to torch."""
    _, paths, _, validation = corpus
    out = tmp_path / "fp16.onnx"
    report = optimize_model(paths[name], out, fp16=True, validate=str(validation))
    fp16 = report.passes[-1]
    assert fp16.name == "fp16" and fp16.top1_agreement is not None and fp16.top1_agreement >= 0.9
    x = np.random.default_rng(2).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    reference = _torch_outputs(name, x)
    np.testing.assert_allclose(Engine(out)(x), reference, rtol=0, atol=2e-2 * np.abs(reference).max())


def test_fp16_checked_under_true_fp16_arithmetic(corpus, tmp_path):
    """ORT on the CPU computes float16 in float32; onnx.reference computes it in float16 numpy."""
    from onnx.reference import ReferenceEvaluator

    _, paths, _, _ = corpus
    out = tmp_path / "fp16.onnx"
    optimize_model(paths["mobilenet_like"], out, fp16=True)
    x = np.random.default_rng(3).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    got = ReferenceEvaluator(str(out)).run(None, {"input": x})[0]
    reference = _torch_outputs("mobilenet_like", x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference, rtol=0, atol=3e-2 * np.abs(reference).max())


def test_fp16_guard_keeps_loud_layers_in_float32_without_metadata(corpus, tmp_path):
    """A foreign model (no deploykit metadata, no --calibration) still gets the overflow guard."""
    from onnx.reference import ReferenceEvaluator

    _, paths, _, _ = corpus
    foreign = onnx.load(str(paths["loud"]))
    del foreign.metadata_props[:]
    src = tmp_path / "foreign.onnx"
    onnx.save(foreign, str(src))
    out = tmp_path / "fp16.onnx"
    report = optimize_model(src, out, fp16=True, input_shape=SHAPE)
    notes = " ".join(report.passes[-1].notes)
    assert "kept /up/Conv in float32" in notes and "overflow guard measured on" in notes
    x = np.random.default_rng(4).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    got = ReferenceEvaluator(str(out)).run(None, {"input": x})[0]
    reference = _torch_outputs("loud", x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-2 * np.abs(reference).max())


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("name", SINGLE_INPUT)
def test_int8_every_calibration_method(corpus, tmp_path, name, method):
    _, paths, calibration, validation = corpus
    out = tmp_path / "int8.onnx"
    report = optimize_model(paths[name], out, int8=True, calibration=str(calibration), calibration_method=method,
                            validate=str(validation))
    int8 = report.passes[-1]
    assert int8.name == "int8" and f"10 sample(s), {method}" in " ".join(int8.notes)
    assert int8.validation["samples"] == 12 and 0.0 <= int8.top1_agreement <= 1.0
    x = np.random.default_rng(5).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    got, reference = Engine(out)(x), _torch_outputs(name, x)
    assert got.shape == reference.shape and np.isfinite(got).all()
    # int8 approximates: within a quarter of the float model's output range on the conv nets. On the
    # attention block it measured 25-29% (untrained, LayerNorm and softmax between int8 MatMuls): the
    # accuracy-budget work (keeping such layers in float) is what brings that down; this bounds today's.
    bound = 0.4 if name == "vit_like" else 0.25
    assert np.abs(got - reference).max() <= bound * np.abs(reference).max()


@pytest.mark.parametrize("name", ["mobilenet_like", "convnext_like"])
def test_bottleneck_on_real_blocks(corpus, tmp_path, name):
    _, paths, _, validation = corpus
    report = optimize_model(paths[name], tmp_path / "b.onnx", bottleneck="energy=0.9", validate=str(validation))
    b = next(p for p in report.passes if p.name == "bottleneck")
    assert "grouped/depthwise convolution(s) as they are" in " ".join(b.notes)
    assert b.macs_after <= b.macs_before and b.top1_agreement is not None


def test_two_input_model_through_every_verb(cli, tmp_path):
    out = tmp_path / "two.onnx"
    result = cli("export", f"{BLOCKS}:two_inputs", "--input-shape", "image:1,3,32,32", "--input-shape", "meta:1,4",
                 "-o", out)
    assert result.code == 0, result.err
    assert "parity vs PyTorch at image 1x3x32x32, meta 1x4" in result.out
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["image", "meta"]
    report = inspect_model(out)
    assert report.input_shapes == {"image": [1, 3, 32, 32], "meta": [1, 4]}
    assert cli("inspect", out, "--input-shape", "image:2,3,32,32", "--input-shape", "meta:2,4").code == 0
    bare = cli("inspect", out, "--input-shape", "1,3,32,32")
    assert bare.code == 2 and "NAME:" in bare.err
    opt = tmp_path / "two_opt.onnx"
    result = cli("optimize", out, "-o", opt)
    assert result.code == 0, result.err
    engine = Engine(opt)
    rng = np.random.default_rng(6)
    image, meta = rng.standard_normal((3, 3, 32, 32)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    module = load_zoo_model(f"{BLOCKS}:two_inputs").module
    with torch.inference_mode():
        reference = module(torch.from_numpy(image), torch.from_numpy(meta)).numpy()
    np.testing.assert_allclose(engine({"image": image, "meta": meta}), reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="missing \\['meta'\\]"):
        engine({"image": image})
    assert cli("optimize", out, "-o", tmp_path / "two16.onnx", "--fp16").code == 0
    int8 = cli("optimize", out, "-o", tmp_path / "two8.onnx", "--int8", "--calibration", tmp_path / "none.npy")
    assert int8.code == 2
    # Real calibration data for both inputs: every pass that reads calibration is refused in one line up
    # front (they used to fail inside, on the array or with ONNX Runtime's missing-input error).
    calibration = tmp_path / "two_cal.npz"
    np.savez(calibration, image=image, meta=meta)
    for flags in (["--int8"], ["--bottleneck", "macs=0.5"], ["--fp16"], ["--recipe", "fast"]):
        refused = cli("optimize", out, "-o", tmp_path / "two_cal.onnx", *flags, "--calibration", calibration,
                      "--input-shape", "image:1,3,32,32", "--input-shape", "meta:1,4")
        assert refused.code == 2, (flags, refused.err)
        errors = [line for line in refused.err.splitlines() if not line.startswith("running ")]  # progress lines
        assert len(errors) == 1 and "2 inputs (image, meta)" in errors[0], (flags, refused.err)
        assert not (tmp_path / "two_cal.onnx").exists()


def test_stem_is_never_cut_to_rank_one_and_unreachable_budgets_are_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 1, 1),
                              torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, 1, 1)).eval()
    path = tmp_path / "stem.onnx"
    export(net, path, input_shape=(1, 3, 32, 32))
    report = optimize_model(path, tmp_path / "low.onnx", bottleneck="ratio=0.01", fuse=False)
    b = next(p for p in report.passes if p.name == "bottleneck")
    stem = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv").name
    assert not any(n.startswith(f"{stem}:") for n in b.notes)
    ranks = [n for n in b.notes if "-> 1x1 32->" in n]
    assert ranks and all("-> 1x1 32->8 +" in n for n in ranks)  # the floor: 8 channels, not 0.01 x 32
    with pytest.raises(UserInputError, match="cannot be reached"):
        optimize_model(path, tmp_path / "x.onnx", bottleneck="macs=0.01")
    assert not (tmp_path / "x.onnx").exists()


def test_constant_weights_and_minus_one_dims(tmp_path):
    """A foreign graph: weights in Constant nodes, a -1 batch: counted, lifted, dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import make_model, tensor_info

    w = np.random.default_rng(7).standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor_info("x", [-1, 3, 16, 16])], [tensor_info("y", [-1, 8, 16, 16])])
    path = tmp_path / "const.onnx"
    onnx.save(model, str(path))
    # Only the batch is open: one sample is a shape the model takes (issue 19: calibration data of that shape
    # was refused for want of --input-shape). A dimension other than the batch still needs a shape.
    assert inspect_model(path).totals.macs == 8 * 16 * 16 * 3 * 9
    spatial = tmp_path / "spatial.onnx"
    onnx.save(make_model(nodes, [tensor_info("x", [1, 3, "H", 16])], [tensor_info("y", [1, 8, "H", 16])]), str(spatial))
    with pytest.raises(UserInputError, match="dynamic dimensions"):
        inspect_model(spatial)
    report = inspect_model(path, (2, 3, 16, 16))
    assert report.totals.params == w.size
    assert report.totals.macs == 2 * 8 * 16 * 16 * 3 * 9
    out = tmp_path / "lifted.onnx"
    optimize_model(path, out, input_shape=(2, 3, 16, 16))
    lifted = onnx.load(str(out))
    assert "Constant" not in [n.op_type for n in lifted.graph.node]
    assert any(tuple(t.dims) == w.shape for t in lifted.graph.initializer)
    assert lifted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
