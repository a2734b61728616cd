"""The bad-input corpus: every verb and Engine fed the mistakes users make, each held to the error contract.

For each case: the documented exit code, exactly one line starting with `error:`, no traceback, no
`internal error`, no temporary file left beside the output, and an existing output byte-identical
afterwards (the output path is pre-filled with sentinel bytes before the command runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploykit import Engine, ShapeMismatchError, UserInputError

SENTINEL = b"existing output, must survive\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, exported):
    """The files the cases refer to, built once: good models, broken models, bad data."""
    root = tmp_path_factory.mktemp("corpus")
    digits, _ = exported("digits")
    good = root / "digits.onnx"
    good.write_bytes(digits.read_bytes())
    proto = onnx.load(str(good))

    newer = onnx.ModelProto()
    newer.CopyFrom(proto)
    for o in newer.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 40
    onnx.save(newer, str(root / "opset40.onnx"))

    no_init = onnx.ModelProto()
    no_init.CopyFrom(proto)
    del no_init.graph.initializer[0]
    onnx.save(no_init, str(root / "noinit.onnx"))

    (root / "nodata").mkdir()
    onnx.save(proto, str(root / "nodata" / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    (root / "nodata" / "ext.onnx.data").unlink()

    net = root / "net.py"
    net.write_text("import torch.nn as nn\ndef build():\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())\n")
    scripted = torch.jit.trace(torch.nn.Conv2d(1, 2, 3).eval(), torch.zeros(1, 1, 8, 8))
    scripted.save(str(root / "conv.pt"))
    torch.save(torch.nn.Conv2d(1, 4, 3).state_dict(), str(root / "weights.pt"))
    pt2 = root / "model.pt2"
    pt2.write_bytes(b"PK\x03\x04 not really a zip archive")

    np.save(root / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    (root / "zero_bytes.npy").write_bytes(b"")
    (root / "one_byte.npy").write_bytes(b"\x93")
    np.save(root / "nan.npy", np.full((4, 1, 8, 8), np.nan, np.float32))
    np.save(root / "three_channels.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.savez(root / "empty.npz")
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("not an image\n")
    (root / "a_file").write_text("a regular file, not a directory\n")
    os.symlink(good, root / "link.onnx")
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(good), str(root / "quantized.onnx"))  # ORT's own: DynamicQuantizeLinear, MatMulInteger

    from onnx import TensorProto, helper, numpy_helper

    def one_node(name, node, inputs, outputs, initializers=()):
        graph = helper.make_graph([node], name, inputs, outputs, list(initializers))
        opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(node.domain, 1)] * bool(node.domain)
        onnx.save(helper.make_model(graph, opset_imports=opsets), str(root / f"{name}.onnx"))

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    one_node("absurd", helper.make_node("Conv", ["x", "w"], ["y"]),
             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [100000, 3, 100000, 100000])],
             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    one_node("conv_only", helper.make_node("Conv", ["x", "w"], ["y"]),
             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    one_node("strings", helper.make_node("Identity", ["x"], ["y"]),
             [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 2])],
             [helper.make_tensor_value_info("y", TensorProto.STRING, ["N", 2])])
    one_node("sequence", helper.make_node("SequenceConstruct", ["x", "x"], ["y"]),
             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
             [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)])
    np.save(root / "float_max.npy", np.full((4, 1, 8, 8), 3.0e38, np.float32))
    (root / "corrupt_images").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "corrupt_images" / "a.png")
    whole = (root / "corrupt_images" / "a.png").read_bytes()
    (root / "corrupt_images" / "a.png").write_bytes(whole[: len(whole) // 2])
    one_node("ort_contrib", helper.make_node("FusedConv", ["x", "w"], ["y"], domain="com.microsoft", activation="Relu"),
             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    one_node("unknown_op", helper.make_node("NotAnOp", ["x"], ["y"]),
             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    (root / "exits.py").write_text("import sys\ndef build():\n    sys.exit(0)\n")
    (root / "exits_on_import.py").write_text("import sys\nsys.exit(0)\ndef build():\n    pass\n")
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    for name, labels in (("labels_2d", np.zeros((4, 2), np.int64)), ("labels_out_of_range", np.array([50, 1, 3, 2])),
                         ("labels_negative", np.array([-1, 1, 3, 2])), ("labels_fractional", np.array([0.5, 1, 3, 2]))):
        np.savez(root / f"{name}.npz", x=x, y=labels)
    return root


# (id, argv with {root}, {out} and {dir} (the output's folder) placeholders, exit code, fragments the error line must contain)
CASES = [
    # -- export: never over its own inputs, finite options, real paths
    ("export-over-factory", ["export", "{root}/net.py:build", "--input-shape", "1,1,8,8", "-o", "{root}/net.py"],
     2, ["is the input"]),
    ("export-over-factory-dot-spelling", ["export", "{root}/net.py:build", "--input-shape", "1,1,8,8",
                                          "-o", "{root}/./net.py"], 2, ["is the input"]),
    ("export-over-archive", ["export", "{root}/conv.pt", "--input-shape", "1,1,8,8", "-o", "{root}/conv.pt"],
     2, ["is the input"]),
    ("export-over-weights", ["export", "{root}/net.py:build", "--weights", "{root}/weights.pt",
                             "--input-shape", "1,1,8,8", "-o", "{root}/weights.pt"], 2, ["is the input"]),
    ("export-tolerance-nan", ["export", "lenet5", "--tolerance", "nan", "-o", "{out}"], 2, ["not a finite"]),
    ("export-tolerance-inf", ["export", "lenet5", "--tolerance", "inf", "-o", "{out}"], 2, ["not a finite"]),
    ("export-tolerance-negative", ["export", "lenet5", "--tolerance", "-1", "-o", "{out}"], 2, ["--tolerance"]),
    ("export-under-proc", ["export", "lenet5", "-o", "/proc/deploykit.onnx"], 2, ["virtual file system"]),
    ("export-parent-is-file", ["export", "lenet5", "-o", "{root}/a_file/x.onnx"], 2, ["is a file"]),
    ("export-parent-missing", ["export", "lenet5", "-o", "{root}/no_such_dir/x.onnx"], 2, ["does not exist"]),
    ("export-truncated-pt2", ["export", "{root}/model.pt2", "--input-shape", "1,1,8,8", "-o", "{out}"],
     2, ["torch.export archive"]),
    ("export-named-shape-unknown-input", ["export", "lenet5", "--input-shape", "image:1,1,32,32", "-o", "{out}"],
     2, ["'image'"]),
    # -- inspect: the runtime's refusals, shapes
    ("inspect-missing-initializer", ["inspect", "{root}/noinit.onnx"], 2, ["not a valid ONNX model"]),
    ("inspect-missing-external-data", ["inspect", "{root}/nodata/ext.onnx"], 2, ["external data"]),
    ("inspect-wrong-shape", ["inspect", "{root}/digits.onnx", "--input-shape", "1,3,8,8"],
     2, ["input 'input' expects shape", "got 1x3x8x8"]),
    ("inspect-wrong-rank", ["inspect", "{root}/digits.onnx", "--input-shape", "1,8,8"], 2, ["it has 4 dimensions, the shape given has 3"]),
    # -- optimize
    ("optimize-over-input", ["optimize", "{root}/digits.onnx", "-o", "{root}/digits.onnx"], 2, ["is the input"]),
    ("optimize-over-input-dot", ["optimize", "{root}/digits.onnx", "-o", "{root}/./digits.onnx"], 2, ["is the input"]),
    ("optimize-over-input-symlink", ["optimize", "{root}/digits.onnx", "-o", "{root}/link.onnx"], 2, ["is the input"]),
    ("optimize-report-over-input", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--report", "{root}/digits.onnx"],
     2, ["is the input"]),
    ("optimize-tolerance-nan", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--tolerance", "nan"],
     2, ["not a finite"]),
    ("optimize-max-error-nan", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--max-error", "nan"],
     2, ["not a finite"]),
    ("optimize-bottleneck-rank-nan", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--bottleneck", "rank=nan"],
     2, ["finite"]),
    ("optimize-bottleneck-ratio-out-of-range", ["optimize", "{root}/digits.onnx", "-o", "{out}",
                                                "--bottleneck", "ratio=2"], 2, ["(0, 1]"]),
    ("optimize-calibration-empty", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                    "--calibration", "{root}/empty.npy"], 2, ["at least one sample"]),
    ("optimize-calibration-zero-bytes", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                         "--calibration", "{root}/zero_bytes.npy"], 2, ["cannot read"]),
    ("optimize-calibration-one-byte", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                       "--calibration", "{root}/one_byte.npy"], 2, ["cannot read"]),
    ("optimize-calibration-nan", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                  "--calibration", "{root}/nan.npy"], 2, ["NaN"]),
    ("optimize-calibration-empty-npz", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                        "--calibration", "{root}/empty.npz"], 2, ["holds no arrays"]),
    ("optimize-calibration-no-images", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                        "--calibration", "{root}/no_images"], 2, ["no images"]),
    ("optimize-opset-too-new", ["optimize", "{root}/opset40.onnx", "-o", "{out}"], 2, ["opset 40 is newer"]),
    ("optimize-missing-initializer", ["optimize", "{root}/noinit.onnx", "-o", "{out}"], 2, ["classifier.1.weight"]),
    ("optimize-missing-external-data", ["optimize", "{root}/nodata/ext.onnx", "-o", "{out}"], 2, ["external data"]),
    ("optimize-wrong-shape", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--input-shape", "1,3,8,8"],
     2, ["input 'input' expects shape", "got 1x3x8x8"]),
    ("optimize-calibration-unused", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--calibration", "digits"],
     2, ["--calibration is used only by"]),
    ("optimize-bottleneck-layers-alone", ["optimize", "{root}/digits.onnx", "-o", "{out}",
                                          "--bottleneck-layers", "conv1"], 2, ["--bottleneck-layers"]),
    ("optimize-fp16-io-alone", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--fp16-io"], 2, ["--fp16-io"]),
    ("optimize-method-alone", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--calibration-method", "entropy"],
     2, ["--calibration-method"]),
    ("optimize-int8-and-fp16", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8", "--fp16",
                                "--calibration", "digits"], 2, ["one of --int8 and --fp16"]),
    ("optimize-int8-already-quantized", ["optimize", "{root}/quantized.onnx", "-o", "{out}", "--int8",
                                         "--calibration", "digits"], 2, ["already quantized", "float model"]),
    ("optimize-under-proc", ["optimize", "{root}/digits.onnx", "-o", "/proc/x.onnx"], 2, ["virtual file system"]),
    # -- slide
    ("slide-image-and-size", ["slide", "{root}/digits.onnx", "--image", "{root}/nan.npy", "--image-size", "16"],
     2, ["not both"]),
    ("slide-neither-image", ["slide", "{root}/digits.onnx"], 2, ["--image-size"]),
    ("slide-over-input", ["slide", "{root}/digits.onnx", "--image-size", "16", "-o", "{root}/digits.onnx"],
     2, ["is the input"]),
    ("slide-image-one-byte", ["slide", "{root}/digits.onnx", "--image", "{root}/one_byte.npy"], 2, ["cannot read"]),
    ("slide-image-nan", ["slide", "{root}/digits.onnx", "--image", "{root}/nan.npy"], 2, ["NaN"]),
    ("slide-wrong-channels", ["slide", "{root}/digits.onnx", "--image", "{root}/three_channels.npy"],
     2, ["1 channel(s)"]),
    # -- build
    ("build-over-input", ["build", "{root}/digits.onnx", "--backend", "ort-cpu", "-o", "{root}/digits.onnx"],
     2, ["is the input"]),
    ("build-opset-too-new", ["build", "{root}/opset40.onnx", "--backend", "ort-cpu", "-o", "{out}"],
     2, ["opset 40 is newer"]),
    ("build-missing-external-data", ["build", "{root}/nodata/ext.onnx", "--backend", "ort-cpu", "-o", "{out}"],
     2, ["external data"]),
    ("build-parent-is-file", ["build", "{root}/digits.onnx", "--backend", "ort-cpu", "-o", "{root}/a_file/x.onnx"],
     2, ["is a file"]),
    ("build-gpu-backend-missing", ["build", "{root}/digits.onnx", "--backend", "ort-cuda", "-o", "{out}"],
     4, ["ort-cuda needs"]),
    # -- what a model declares or a shape asks for is refused before it is allocated
    ("optimize-absurd-declared-dims", ["optimize", "{root}/absurd.onnx", "-o", "{out}"], 2, ["PiB of memory"]),
    ("inspect-shape-beyond-int64", ["inspect", "{root}/digits.onnx", "--input-shape", "99999999999999999999,1,8,8"],
     2, ["beyond 2,147,483,647"]),
    ("bench-batch-too-large", ["bench", "{root}/digits.onnx", "--batch", "100000000", "--iterations", "1"],
     2, ["a batch of 100000000", "smaller --batch"]),
    ("slide-image-too-large", ["slide", "{root}/digits.onnx", "--image-size", "1000000"], 2, ["smaller --image-size"]),
    ("export-shape-too-large", ["export", "digits", "--input-shape", "100000,1,800,800", "-o", "{out}"],
     2, ["smaller --input-shape"]),
    ("slide-nothing-to-slide", ["slide", "{root}/conv_only.onnx", "--image-size", "16"], 2, ["nothing to slide"]),
    # -- inputs and outputs deploykit cannot sample or compare
    ("inspect-string-input", ["inspect", "{root}/strings.onnx"], 2, ["holds strings"]),
    ("optimize-string-input", ["optimize", "{root}/strings.onnx", "-o", "{out}"], 2, ["holds strings"]),
    ("bench-string-input", ["bench", "{root}/strings.onnx", "--iterations", "1"], 2, ["holds strings"]),
    ("optimize-sequence-output", ["optimize", "{root}/sequence.onnx", "-o", "{out}"], 2, ["not a tensor"]),
    # -- data: what would be silently wrong or die inside a library
    ("optimize-calibration-float-max", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                        "--calibration", "{root}/float_max.npy"], 2, ["too wide for an int8 scale"]),
    ("optimize-calibration-corrupt-image", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--int8",
                                            "--calibration", "{root}/corrupt_images"], 2, ["cannot read the image"]),
    ("optimize-labels-2d", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--fp16", "--validate",
                            "{root}/labels_2d.npz"], 2, ["one class index per sample"]),
    ("optimize-labels-out-of-range", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--fp16", "--validate",
                                      "{root}/labels_out_of_range.npz"], 2, ["up to class 50", "10 classes"]),
    ("optimize-labels-negative", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--fp16", "--validate",
                                  "{root}/labels_negative.npz"], 2, ["negative label -1"]),
    ("optimize-labels-fractional", ["optimize", "{root}/digits.onnx", "-o", "{out}", "--fp16", "--validate",
                                    "{root}/labels_fractional.npz"], 2, ["not whole numbers"]),
    # -- serve: its log is an output like any other
    ("serve-log-over-model", ["serve", "{root}/digits.onnx", "--log-file", "{root}/digits.onnx"], 2, ["is the input"]),
    ("serve-log-in-missing-folder", ["serve", "{root}/digits.onnx", "--log-file", "{root}/nodir/t.log"],
     2, ["does not exist"]),
    ("build-ort-cpu-ignores-fp16", ["build", "{root}/digits.onnx", "--backend", "ort-cpu", "--fp16", "-o", "{out}"],
     2, ["does not use --fp16", "optimize --fp16"]),
    ("build-ort-cpu-ignores-profile", ["build", "{root}/digits.onnx", "--backend", "ort-cpu", "--min-shape", "1,1,8,8",
                                       "--workspace", "64", "-o", "{out}"], 2, ["--min-shape, --workspace"]),
    ("build-profile-min-above-max", ["build", "{root}/digits.onnx", "--backend", "ort-trt", "--min-shape", "8,1,8,8",
                                     "--max-shape", "1,1,8,8", "-o", "{out}"], 2, ["--min-shape above --max-shape"]),
    ("build-ov-contrib-ops-it-came-with", ["build", "{root}/ort_contrib.onnx", "--backend", "ov-cpu", "-o",
                                           "{dir}/m.xml"], 2, ["came with the model", "ort-cpu"]),
    ("build-ov-unconvertible-op", ["build", "{root}/unknown_op.onnx", "--backend", "ov-cpu", "-o", "{dir}/m.xml"],
     2, ["No conversion rule found for operations: NotAnOp"]),
    # -- export of a factory that exits instead of returning
    ("export-factory-exits", ["export", "{root}/exits.py:build", "--input-shape", "1,1,8,8", "-o", "{out}"],
     2, ["called sys.exit(0)"]),
    ("export-module-exits-on-import", ["export", "{root}/exits_on_import.py:build", "--input-shape", "1,1,8,8",
                                       "-o", "{out}"], 2, ["called sys.exit(0)", "__main__"]),
    # -- names
    ("optimize-name-too-long", ["optimize", "{root}/digits.onnx", "-o", "{dir}/" + "n" * 300 + ".onnx"],
     2, ["choose a shorter -o name"]),
    # -- package
    ("package-onnx-as-plan", ["package", "{root}/digits.onnx", "--triton", "{dir}/repo", "--backend", "tensorrt"],
     2, ["not a TensorRT plan"]),
    # -- bench
    ("bench-torch-on-onnx", ["bench", "{root}/digits.onnx", "--backend", "torch", "--iterations", "2"],
     2, ["--backend torch"]),
    ("bench-duration-nan", ["bench", "{root}/digits.onnx", "--duration", "nan"], 2, ["not a finite"]),
    ("bench-report-over-input", ["bench", "{root}/digits.onnx", "--iterations", "2", "--report",
                                 "{root}/digits.onnx"], 2, ["is the input"]),
    ("bench-bad-batch", ["bench", "{root}/digits.onnx", "--batch", "0"], 2, ["--batch"]),
    ("bench-iterations-and-duration", ["bench", "{root}/digits.onnx", "--iterations", "2", "--duration", "1"],
     2, ["not both"]),
]


def _output_in(argv):
    """The path the command would write (the -o / --report value), if any."""
    for flag in ("-o", "--report"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1])
    return None


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_keeps_the_contract(cli, corpus, tmp_path, case):
    _, argv, code, fragments = case
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir()
    argv = [a.format(root=corpus, out=out, dir=out.parent) for a in argv]
    target = _output_in(argv)
    pre_filled = (target is not None and len(target.name) < 255 and target.parent.is_dir() and not target.exists()
                  and "/proc" not in str(target))
    if pre_filled:
        target.write_bytes(SENTINEL)
    before = {p: p.read_bytes() for p in corpus.rglob("*") if p.is_file()}

    result = cli(*argv)

    assert result.code == code, (result.code, result.err)
    error_lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    # Nothing partial: the output folder holds what it held before, and no input changed.
    assert sorted(p.name for p in out.parent.iterdir()) == (
        [target.name] if pre_filled and target.parent == out.parent else [])
    if pre_filled:
        assert target.read_bytes() == SENTINEL
    leftovers = [p for p in corpus.rglob(".*.tmp")]
    assert not leftovers, leftovers
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was modified"


def test_package_leaves_no_repository_behind_when_it_fails(cli, corpus, tmp_path):
    repo = tmp_path / "new" / "repo"
    result = cli("package", corpus / "digits.onnx", "--triton", repo, "--max-batch-size", "8",
                 "--preferred-batch-size", "64")
    assert result.code == 2 and "preferred batch sizes" in result.err
    assert not (tmp_path / "new").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: a real ENOSPC. Needs root with mount rights (this project's machines have them)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("argv", [["optimize", "{root}/digits.onnx", "-o", "{full}/o.onnx"],
                                  ["export", "digits", "-o", "{full}/e.onnx"],
                                  ["package", "{root}/digits.onnx", "--triton", "{full}/repo"]],
                         ids=["optimize", "export", "package"])
def test_a_full_disk_is_one_line_and_leaves_nothing(cli, corpus, full_disk, argv):
    result = cli(*[a.format(root=corpus, full=full_disk) for a in argv])
    assert result.code == 2, result.err
    assert [line for line in result.err.splitlines() if line.startswith("error:")] == [result.err.splitlines()[-1]]
    assert result.err.splitlines()[-1].startswith("error: cannot write") and "the disk is full" in result.err
    assert "--exporter" not in result.err and "Traceback" not in result.err
    assert list(full_disk.iterdir()) == []


def test_engine_bad_inputs(corpus, tmp_path):
    with pytest.raises(UserInputError, match="external data"):
        Engine(corpus / "nodata" / "ext.onnx")
    with pytest.raises(UserInputError, match="opset 40 is newer"):
        Engine(corpus / "opset40.onnx")
    engine = Engine(corpus / "digits.onnx")
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert engine.run(x)[0].shape == (2, 10)  # run() takes what __call__ takes
    with pytest.raises(ShapeMismatchError, match="expects shape batchx1x8x8, got 2x1x9x8"):
        engine.run(np.zeros((2, 1, 9, 8), np.float32))
    with pytest.raises(ShapeMismatchError, match="expects dtype float32"):
        engine(x.astype(np.float64))
    with pytest.raises(ShapeMismatchError, match="missing \\['input'\\]"):
        engine.run({"image": x})
    engine.close()
    with pytest.raises(UserInputError, match="closed"):
        engine(x)
    with Engine(corpus / "digits.onnx") as scoped:
        assert scoped(x).shape == (2, 10)
    with pytest.raises(UserInputError, match="closed"):
        scoped(x)


def test_engine_keeps_the_callers_session_options(corpus):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    Engine(corpus / "digits.onnx", providers="cpu", session_options=opts)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_engine_names_the_input_whose_batch_disagrees(tmp_path, capfd):
    from conftest import make_model, tensor_info
    from onnx import helper

    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       [tensor_info("a", ["batch", 4]), tensor_info("b", ["batch", 4])],
                       [tensor_info("y", ["batch", 4])])
    path = tmp_path / "two_inputs.onnx"
    onnx.save(model, str(path))
    engine = Engine(path)
    a, b = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ShapeMismatchError, match="input 'b' has batch=3 .* input 'a' has batch=2"):
        engine(a=a, b=b)
    assert engine(a=a, b=a).shape == (2, 4)
    assert "onnxruntime" not in capfd.readouterr().err.lower()


def test_bare_runners_validate_their_feeds(exported):
    from deploykit.backends import get_backend

    path, _ = exported("digits")
    torch_runner = get_backend("torch").runner("digits")
    with pytest.raises(ShapeMismatchError, match="expects shape batchx1x8x8"):
        torch_runner.infer({"input": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(ShapeMismatchError, match="missing"):
        torch_runner.infer({"x": np.zeros((1, 1, 8, 8), np.float32)})
    ort_runner = get_backend("ort-cpu").runner(path)
    with pytest.raises(ShapeMismatchError, match="expects dtype float32"):
        ort_runner.infer({"input": np.zeros((1, 1, 8, 8), np.int64)})


def test_debug_works_after_the_subcommand(tmp_path):
    exe = [sys.executable, "-m", "deploykit.cli"]
    loud = subprocess.run(exe + ["inspect", str(tmp_path / "missing.onnx"), "--debug"], capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "UserInputError" in loud.stderr
    assert "No such option" not in loud.stderr


def test_written_files_honour_the_umask(exported, tmp_path):
    path, _ = exported("digits")
    out = tmp_path / "opt.onnx"
    script = ("import os, sys; os.umask(0o022); from deploykit.cli import main; "
              f"main(['optimize', {str(path)!r}, '-o', {str(out)!r}])")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert out.stat().st_mode & 0o777 == 0o644


def test_sigterm_during_the_write_leaves_nothing(tmp_path):
    """SIGTERM arrives while the temporary output exists: it is removed, the message is one line, exit 143."""
    out = tmp_path / "vgg16.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "deploykit.cli", "export", "vgg16", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".vgg16.onnx.*.tmp")):
        time.sleep(0.01)
    assert list(tmp_path.glob(".vgg16.onnx.*.tmp")), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["error: interrupted by SIGTERM; nothing was written"], err
    assert list(tmp_path.iterdir()) == []


def test_a_signal_python_cannot_raise_still_stops_the_command(tmp_path):
    """A signal handled inside a weakref callback (CI once caught one in an import lock's cleanup) raises
    where Python can only drop the exception: the command must still stop, exit 143 and remove its
    temporary, not run on to exit 0."""
    out = tmp_path / "digits.onnx"
    # The signal is raised from a weakref callback at the moment the temporary is complete and not yet
    # renamed (atomic_path asks for the umask then), which is where CI's SIGTERM landed.
    script = f"""
import signal, weakref
from deploykit import cli, storage
umask = storage.current_umask
def umask_then_signal():
    class Token: pass
    token = Token()
    ref = weakref.ref(token, lambda _: signal.raise_signal(signal.SIGTERM))
    del token
    return umask()
storage.current_umask = umask_then_signal
cli.main(['export', 'digits', '-o', {str(out)!r}])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines() == ["error: interrupted by SIGTERM; nothing was written"], done.stderr
    assert list(tmp_path.iterdir()) == []


def test_interruption_after_the_output_is_complete_says_so(tmp_path):
    from deploykit import storage
    from deploykit.cli import interrupted_message

    storage.WRITTEN.clear()
    assert interrupted_message(signal.SIGINT) == "error: interrupted by SIGINT; nothing was written"
    with storage.atomic_path(tmp_path / "done.json") as tmp:
        tmp.write_text("{}")
    message = interrupted_message(signal.SIGINT)
    storage.WRITTEN.clear()
    assert "done.json was completely written" in message and "did not finish" in message


def test_fixed_batch_pt2_is_told_to_use_static_batch(cli, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    pt2 = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 8, 8),)), str(pt2))
    out = tmp_path / "fixed.onnx"
    result = cli("export", pt2, "--input-shape", "1,1,8,8", "-o", out)
    assert result.code == 2 and "--static-batch" in result.err and not out.exists()
    assert cli("export", pt2, "--input-shape", "1,1,8,8", "--static-batch", "-o", out).code == 0


def test_export_says_which_opset_it_wrote(cli, tmp_path):
    out = tmp_path / "lenet.onnx"
    result = cli("export", "lenet5", "--exporter", "dynamo", "--opset", "7", "-o", out)
    assert result.code == 0, result.err
    written = next(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    assert f"opset {written} (asked for 7)" in result.out and written >= 18


def test_bench_skips_the_batches_a_static_model_cannot_take(cli, tmp_path):
    out = tmp_path / "static.onnx"
    assert cli("export", "digits", "--static-batch", "-o", out).code == 0
    result = cli("bench", out, "--batch", "1,8", "--iterations", "3", "--warmup", "1", "--json")
    assert result.code == 0, result.err
    import json

    report = json.loads(result.out)
    assert [r["batch"] for r in report["results"]] == [1]
    assert any("skipped batch 8" in w for w in report["warnings"])
    result = cli("bench", out, "--batch", "8", "--iterations", "3")
    assert result.code == 2 and "no model takes batch 8" in result.err


def test_build_carries_external_data_along(cli, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "src"
    source.mkdir()
    onnx.save(onnx.load(str(corpus / "digits.onnx")), str(source / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    out = tmp_path / "built" / "artefact.onnx"
    out.parent.mkdir()
    assert cli("build", source / "ext.onnx", "--backend", "ort-cpu", "-o", out).code == 0
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    reference = Engine(corpus / "digits.onnx")(x)
    np.testing.assert_allclose(Engine(out)(x), reference, rtol=1e-5, atol=1e-6)
    # The built artefact stands on its own: the source folder can go away.
    for p in source.iterdir():
        p.unlink()
    np.testing.assert_allclose(Engine(out)(x), reference, rtol=1e-5, atol=1e-6)
    again = tmp_path / "built" / "again.onnx"
    assert cli("build", corpus / "digits.onnx", "--backend", "ort-cpu", "-o", again, "--lean-memory").code == 0
    assert (tmp_path / "built" / "again.onnx.data").exists()
    np.testing.assert_allclose(Engine(again)(x), reference, rtol=1e-5, atol=1e-6)


def test_inspect_warns_about_an_opset_the_runtime_lacks(cli, corpus):
    result = cli("inspect", corpus / "opset40.onnx")
    assert result.code == 0, result.err
    assert "warning: the model's opset 40 is newer than this onnxruntime implements" in result.out
    assert "warning: the model's opset" not in cli("inspect", corpus / "digits.onnx").out
