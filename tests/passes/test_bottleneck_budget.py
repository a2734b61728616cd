"""The accuracy budget governs the bottleneck pass: ranks are raised until it holds, or the pass refuses.

Accuracy is measured here with Engine on the digits test split (and agreement on the hand-built
model), not read from the report.
"""

from pathlib import Path

import numpy as np
import pytest

from deploykit import Engine, export
from deploykit.errors import VerificationError
from deploykit.optimize import optimize_model

BLOCKS = Path(__file__).parents[1] / "models" / "blocks.py"


def _digits_accuracy(model) -> float:
    from deploykit_zoo.digits_data import load_digits_split

    _, _, x, y = load_digits_split()
    return 100.0 * float(np.mean(Engine(model)(x.astype(np.float32)).argmax(1) == y))


def test_rank_one_is_raised_until_digits_holds_a_point(exported, tmp_path):
    path, _ = exported("digits")
    before = _digits_accuracy(path)
    plain = tmp_path / "plain.onnx"
    optimize_model(path, plain, bottleneck="rank=1")  # no data to judge by: no budget
    assert _digits_accuracy(plain) < before - 10  # rank 1 breaks the model: the budget has work to do
    held = tmp_path / "held.onnx"
    report = optimize_model(path, held, bottleneck="rank=1", validate="digits", max_accuracy_drop=1.0)
    bottleneck = next(p for p in report.passes if p.name == "bottleneck")
    assert any("raised every rank" in n for n in bottleneck.notes)
    assert bottleneck.macs_after < bottleneck.macs_before  # still a bottleneck, not the model left as it was
    # A rank raised close to break-even is not kept for a saving of a few MACs: the layer stays whole.
    import re

    pairs = [(int(a.replace(",", "")), int(b.replace(",", ""))) for note in bottleneck.notes
             for a, b in re.findall(r"; MACs ([\d,]+) -> ([\d,]+); relative weight error", note)]
    assert pairs and all(after <= 0.9 * before for before, after in pairs)
    assert _digits_accuracy(held) >= before - 1.0


def test_bottleneck_and_int8_share_one_budget_on_digits(exported, cli, tmp_path):
    path, _ = exported("digits")
    before = _digits_accuracy(path)
    out = tmp_path / "stacked.onnx"
    result = cli("optimize", path, "-o", out, "--bottleneck", "macs=0.3", "--int8", "--calibration", "digits",
                 "--validate", "digits", "--max-accuracy-drop", "1.0")
    assert result.code == 0, result.err
    assert "accuracy budget" in result.out and "of --max-accuracy-drop 1" in result.out
    assert _digits_accuracy(out) >= before - 1.0
    from deploykit.analysis import inspect_model

    assert inspect_model(out).totals.macs < inspect_model(path).totals.macs  # still factorised, not given up


def test_a_budget_no_factorisation_can_hold_fails_with_exit_3(cli, tmp_path):
    path = tmp_path / "convnext.onnx"
    export(f"{BLOCKS}:convnext_like", path, input_shape=(1, 3, 32, 32))
    validation = tmp_path / "validation.npy"
    np.save(validation, np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out.onnx"
    # Random weights have flat singular spectra: even near break-even a factorised layer flips predictions.
    with pytest.raises(VerificationError, match="cannot hold an accuracy drop"):
        optimize_model(path, out, bottleneck="rank=1", validate=str(validation), max_accuracy_drop=2.0)
    result = cli("optimize", path, "-o", out, "--bottleneck", "rank=1", "--validate", validation,
                 "--max-accuracy-drop", "2")
    assert result.code == 3 and "nothing was written" in result.err and "Traceback" not in result.err
    assert not out.exists()


def _unnamed_two_conv_model(path, seed):
    """A 1x1 stem and a 16->16 3x3 conv, no node names (as ORT's quantizer and hand-built graphs write them)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "stem"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["scores"])],
        "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "stem")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    validation = path.with_suffix(".npy")
    np.save(validation, rng.standard_normal((512, 16, 8, 8)).astype(np.float32))
    return path, validation


def test_unnamed_layers_are_factorised_under_their_own_names(tmp_path):
    path, validation = _unnamed_two_conv_model(tmp_path / "m.onnx", seed=0)
    report = optimize_model(path, tmp_path / "out.onnx", bottleneck="rank=1", validate=str(validation),
                            max_accuracy_drop=0.0)
    bottleneck = next(p for p in report.passes if p.name == "bottleneck")
    assert bottleneck.macs_after < bottleneck.macs_before  # it said "no convolution to factorise" before
    assert any(n.startswith("Conv_2: 16->16 3x3") for n in bottleneck.notes)


def test_a_budget_only_the_unchanged_model_holds_is_refused_not_reported_as_done(tmp_path, cli):
    # The 3x3 layer's break-even rank is 14: raised 7/8 of the way (rank 13) it would save under a tenth of its
    # MACs and is left whole, and 6/8 (rank 11) still costs agreement: the budget holds with nothing factorised.
    path, validation = _unnamed_two_conv_model(tmp_path / "m.onnx", seed=1)
    out = tmp_path / "out.onnx"
    result = cli("optimize", path, "-o", out, "--bottleneck", "rank=1", "--validate", validation,
                 "--max-accuracy-drop", "0")
    assert result.code == 3 and "only the unchanged model holds the budget" in result.err
    assert not out.exists()


def _three_wide_convs(path, rank=40):
    """Three 64->64 3x3 convs with ReLUs, pooled to 64 scores. Each weight has `rank` equal singular values and
    the rest 1% of them: below that rank top-1 agreement breaks, at it the layers are all but exact, so the
    accuracy budget raises any lower ranks to about it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, source = [], [], "x"
    spectrum = np.where(np.arange(64) < rank, 1.0, 0.001) / np.sqrt(rank)
    for i in range(3):
        u, _ = np.linalg.qr(rng.standard_normal((64 * 9, 64)))
        v, _ = np.linalg.qr(rng.standard_normal((64, 64)))
        # The pass's layout: rows (output channel, kernel row, kernel column), columns input channels.
        weight = ((u * spectrum) @ v.T).reshape(64, 3, 3, 64).transpose(0, 3, 1, 2) * 3
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [source, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        source = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [source], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["scores"], name="flat")]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 28, 28])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    validation = path.with_suffix(".npy")
    # Each sample's own channel offsets decide its class (pure noise pools to the same scores for every sample).
    offsets = 2 * rng.standard_normal((64, 64, 1, 1))
    np.save(validation, (rng.standard_normal((64, 64, 28, 28)) + offsets).astype(np.float32))
    return path, validation


def test_a_time_budget_is_not_kept_by_ranks_raised_past_it(tmp_path, monkeypatch):
    """time=F under an accuracy budget: the ranks raised to hold accuracy are timed again, and a raise that runs
    well over F is refused instead of written as time=F. The whole-model timer is injected (latency taken as
    proportional to MACs, counted by inspect) so that the check's logic does not ride on this machine's noise:
    time=0.5 then means about rank 29 of the 3x3 layers' break-even 57.6, the budget needs rank 40 (the
    weights' own rank), and that runs in at least 40/57.6 = 0.69 of the time."""
    import re

    import onnx
    import onnx_ir as ir

    from deploykit.analysis import inspect_model
    from deploykit.model_timing import ModelTimer
    from deploykit.passes.bottleneck import BottleneckPass
    from deploykit.passes.bottleneck.layers import RAISED_TIME_SLACK

    class MacsTimer(ModelTimer):
        def ratio(self, candidate):
            source = inspect_model(onnx.load(str(self._source))).totals.macs
            return inspect_model(ir.to_proto(candidate)).totals.macs / source

    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(BottleneckPass, "model_timer", MacsTimer)
    path, validation = _three_wide_convs(tmp_path / "wide.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(VerificationError, match="in its time") as refused:
        optimize_model(path, out, bottleneck="time=0.5", validate=str(validation), max_accuracy_drop=1.0,
                       input_shape=(1, 64, 28, 28))
    found = re.search(r"run in (\d\.\d\d) of the measured time, over (\d\.\d\d)", str(refused.value))
    # The limit is max(F, the chosen ranks' ratio) + the slack. The chosen ranks come from real per-layer timings
    # (only the whole-model timer is injected), which on a busy 2-core machine land up to 0.1 over F (0.56 seen in
    # a fresh-clone run); the raised ranks' 0.69 by MACs is over any such limit.
    assert float(found.group(1)) >= 0.69 and float(found.group(2)) <= 0.5 + RAISED_TIME_SLACK + 0.1
    assert not out.exists()
    # A time budget the weights' rank fits in is kept, and the written model runs (by the same timer) in it.
    report = optimize_model(path, out, bottleneck="time=0.8", validate=str(validation), max_accuracy_drop=1.0,
                            input_shape=(1, 64, 28, 28))
    notes = " ".join(next(p for p in report.passes if p.name == "bottleneck").notes)
    chosen = float(re.search(r"the chosen ranks run in (\d\.\d\d) of it", notes).group(1))
    written = inspect_model(out).totals.macs / inspect_model(path).totals.macs
    if "raised every rank" in notes:
        kept = float(re.search(r"the raised ranks run in (\d\.\d\d) of the measured time", notes).group(1))
        assert kept == pytest.approx(written, abs=0.006) and kept <= max(0.8, chosen) + RAISED_TIME_SLACK
    else:
        assert written == pytest.approx(chosen, abs=0.006)
    assert written < 1.0
