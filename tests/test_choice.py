"""The choice among engines and precisions (deploykit.choice.choose), on measurements given to it: which must
win, ties and the budget. The real measuring is exercised by the recipe tests (test_optimize, test_ppocr)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploykit.choice import Candidate, choose


def _candidates(measured):
    return [Candidate(engine, precision, f"{engine}-{precision}.onnx", drop=drop, latency_ms=ms)
            for (engine, precision), (drop, ms) in measured.items()]


def test_openvino_bf16_wins_where_it_is_fastest_and_holds_the_budget():
    # As measured on the PP-OCR recogniser on an AVX512_BF16 CPU: bf16 in OpenVINO beats every int8 form.
    found = _candidates({("ort-cpu", "fp32"): (0.0, 12.3), ("ov-cpu", "f32"): (0.0, 5.2), ("ov-cpu", "bf16"): (0.4, 3.4),
                         ("ort-cpu", "int8"): (0.8, 6.7), ("ov-cpu", "int8"): (0.6, 10.2)})
    winner = choose(found, budget=1.0)
    assert winner.label == "ov-cpu bf16" and winner.verdict == "chosen"
    assert [c.verdict.split(" slower")[0] for c in found if c is not winner] == ["3.62x", "1.53x", "1.97x", "3.00x"]


def test_onnx_runtime_wins_on_a_model_that_is_all_per_call_overhead():
    found = _candidates({("ort-cpu", "fp32"): (0.0, 0.012), ("ov-cpu", "f32"): (0.0, 0.060),
                         ("ort-cpu", "int8"): (0.0, 0.013), ("ov-cpu", "int8"): (0.0, 0.070)})
    assert choose(found, budget=1.0).label == "ort-cpu fp32"


def test_a_faster_candidate_over_budget_loses_and_says_why():
    found = _candidates({("ort-cpu", "fp32"): (0.0, 10.0), ("ort-cpu", "int8"): (3.5, 4.0), ("ov-cpu", "bf16"): (0.5, 6.0)})
    winner = choose(found, budget=1.0)
    assert winner.label == "ov-cpu bf16"
    assert found[1].verdict == "costs 3.50 points, over the budget of 1"


def test_a_tie_inside_the_noise_goes_to_the_more_accurate():
    # 2% apart is inside the round-to-round noise: the one that costs nothing wins.
    found = _candidates({("ort-cpu", "fp32"): (0.0, 10.0), ("ov-cpu", "bf16"): (0.0, 5.1), ("ov-cpu", "int8"): (0.9, 5.0)})
    winner = choose(found, budget=1.0)
    assert winner.label == "ov-cpu bf16"
    assert "a tie" in found[2].verdict and "0.90 points less accurate" in found[2].verdict


def test_at_equal_drops_a_tie_goes_to_the_outputs_nearer_the_inputs():
    # f32 and bf16 both lose nothing on the validation set and time 3% apart: the timing noise must not decide.
    found = [Candidate("ort-cpu", "fp32", "a.onnx", drop=0.0, deviation=0.0, latency_ms=10.0),
             Candidate("ov-cpu", "bf16", "a.onnx", drop=0.0, deviation=2e-2, latency_ms=5.0),
             Candidate("ov-cpu", "f32", "a.onnx", drop=0.0, deviation=3e-6, latency_ms=5.15)]
    winner = choose(found, budget=1.0)
    assert winner.label == "ov-cpu f32"
    assert "further from the input's outputs" in found[1].verdict and "2.0e-02 against 3.0e-06" in found[1].verdict
    # Deviations both inside float32 noise (an int8 model the budget kept almost all in float) are equal: the faster
    # of the tied wins, not the one a few float32 roundings nearer.
    nearly_float = Candidate("ov-cpu", "int8", "b.onnx", drop=0.0, deviation=3.3e-5, latency_ms=5.1)
    assert choose([found[0], found[2], nearly_float], budget=1.0).label == "ov-cpu int8"
    found[2].deviation = 3.6e-5
    assert choose([found[0], found[2], nearly_float], budget=1.0).label == "ov-cpu int8"
    nearly_float.latency_ms = 5.2
    assert choose([found[0], found[2], nearly_float], budget=1.0).label == "ov-cpu f32"
    found[2].deviation = 3e-6
    # Outside the tie the faster one wins whatever its deviation.
    found[2].latency_ms = 6.0
    assert choose(found, budget=1.0).label == "ov-cpu bf16"


def test_judging_measures_each_candidates_deviation_from_the_input_in_onnx_runtime(exported, tmp_path):
    """The deviation is computed in the candidate's own engine against the input's outputs in ORT: checked here
    against two plain onnxruntime sessions and numpy."""
    import numpy as np
    import onnxruntime as ort

    from deploykit.choice import judge_in_engine
    from deploykit.optimize import optimize_model
    from deploykit.signature import read_signature
    from deploykit.storage import load_model
    from deploykit.validation import AccuracyJudge, load_validation

    path, _ = exported("digits")
    int8 = tmp_path / "int8.onnx"
    optimize_model(path, int8, int8=True, calibration="digits")
    signature = read_signature(load_model(path, load_weights=False))
    validation = load_validation("digits", signature, signature.resolve(None))
    found = [Candidate("ort-cpu", "fp32", str(path)), Candidate("ort-cpu", "int8", str(int8))]
    judge_in_engine(found, AccuracyJudge(str(path), validation))

    def outputs(model):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return session.run(None, validation.feeds)[0].astype(np.float64)

    reference, quantized = outputs(path), outputs(int8)
    expected = np.abs(quantized - reference).max() / max(np.abs(reference).max(), 1e-2)
    assert found[0].deviation < 1e-6
    assert found[1].deviation == pytest.approx(expected, rel=1e-3) and expected > 1e-4


def test_untimed_or_unjudged_candidates_are_never_chosen():
    found = [Candidate("ort-cpu", "fp32", "a.onnx", drop=0.0, latency_ms=10.0),
             Candidate("ov-cpu", "bf16", "a.onnx", drop=None, latency_ms=1.0, verdict="cannot run here: no plugin"),
             Candidate("ov-cpu", "f32", "a.onnx", drop=0.0, latency_ms=None)]
    assert choose(found, budget=1.0).label == "ort-cpu fp32"
    assert found[1].verdict == "cannot run here: no plugin" and found[2].verdict == "could not be timed"


def test_nothing_holding_the_budget_is_an_error():
    from deploykit.errors import DeploykitError

    with pytest.raises(DeploykitError, match="no candidate holds"):
        choose(_candidates({("ort-cpu", "fp32"): (2.0, 1.0)}), budget=1.0)


def test_int8_with_its_float_layers_in_bf16_is_a_candidate_and_runs_as_recorded(exported, tmp_path):
    """Where the CPU has native bf16, the int8 model is also tried in OpenVINO with the layers int8 left in float
    (the budget's, the tail) in bf16; chosen, it is written so that Engine runs it that way."""
    from deploykit import Engine
    from deploykit.backends import get_backend
    from deploykit.choice import candidates_for, write_winner
    from deploykit.machine import has_native_bf16
    from deploykit.optimize import optimize_model

    if not get_backend("ov-cpu").available()[0] or not has_native_bf16():
        pytest.skip("needs OpenVINO on a CPU with native bf16")
    path, _ = exported("digits")
    int8 = tmp_path / "int8.onnx"
    optimize_model(path, int8, int8=True, calibration="digits", fold=True, fuse=False, target="openvino")
    found, _ = candidates_for(Path(path), int8)
    mixed = next(c for c in found if c.label == "ov-cpu int8+bf16")
    assert mixed.path == str(int8)
    write_winner(mixed, tmp_path / "chosen.onnx")
    with Engine(tmp_path / "chosen.onnx") as engine:
        assert engine.providers == ["OpenVINO CPU (bf16)"]
    with Engine(int8, providers="openvino") as plain:  # the same file without the record: its float layers in f32
        assert plain.providers == ["OpenVINO CPU (int8)"]
