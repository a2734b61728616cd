"""deploykit.timing: the one loop every latency comes from, and its fresh-process runner."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit.errors import DeploykitError
from deploykit.timing import interleaved, latencies, time_in_fresh_process


def test_warmup_calls_are_not_timed_and_the_count_is_kept():
    calls = []
    times = latencies(lambda: calls.append(1), warmup=4, runs=7)
    assert len(times) == 7
    assert len(calls) == 11


class FakeClock:
    """A clock that moves only when told: the loop's logic, tested without timing anything."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_runs_continue_until_the_duration_has_passed():
    clock = FakeClock()
    times = latencies(lambda: clock.advance(0.125), warmup=2, runs=1, seconds=1.0, clock=clock)  # exact binary steps
    assert times == [0.125] * 8  # the run that reaches 1 s is the last
    assert clock.now == 1.25  # and the two warm-up runs were not timed


def test_what_runs_after_each_call_is_outside_the_timing():
    clock, after_calls = FakeClock(), []
    times = latencies(lambda: clock.advance(0.002), warmup=0, runs=3, clock=clock,
                      after=lambda: (after_calls.append(1), clock.advance(0.05)))
    assert len(after_calls) == 3
    assert times == pytest.approx([0.002] * 3)
    # ... and with seconds= the time spent in `after` still counts towards the duration.
    clock = FakeClock()
    assert latencies(lambda: clock.advance(0.125), warmup=0, runs=1, seconds=1.0, clock=clock,
                     after=lambda: clock.advance(0.375)) == [0.125, 0.125]


def test_real_timing_smoke():
    """One run on the real clock: sleep never returns early, and the loop stops once the duration has passed."""
    times = latencies(lambda: time.sleep(0.01), warmup=0, runs=1, seconds=0.05)
    assert all(t >= 0.01 for t in times) and len(times) >= 2


def test_variants_take_turns_round_by_round():
    order = []
    samples = interleaved({"a": 1, "b": 2}, 3, lambda spec: order.append(spec) or [float(spec)])
    assert order == [1, 2, 1, 2, 1, 2]
    assert samples == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def _two_input_model(path, dtype=TensorProto.FLOAT):
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", dtype, [1, 4]),
                               helper.make_tensor_value_info("y", dtype, [1, 4])],
                              [helper.make_tensor_value_info("z", dtype, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_model_with_several_inputs_is_timed_on_saved_feeds(tmp_path):
    _two_input_model(tmp_path / "add.onnx")
    np.savez(tmp_path / "feeds.npz", x=np.ones((1, 4), np.float32), y=np.ones((1, 4), np.float32))
    times = time_in_fresh_process(tmp_path / "add.onnx", feeds=tmp_path / "feeds.npz", runs=6)
    assert len(times) == 6 and all(t > 0 for t in times)


def test_a_float16_model_is_fed_float16_from_a_shape(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    assert len(time_in_fresh_process(tmp_path / "relu.onnx", shape=(2, 3), runs=4)) == 4


def test_a_failure_in_the_fresh_process_is_one_line_naming_the_model(tmp_path):
    _two_input_model(tmp_path / "add.onnx")
    np.savez(tmp_path / "feeds.npz", x=np.ones((1, 4), np.float32))  # y is missing
    with pytest.raises(DeploykitError) as caught:
        time_in_fresh_process(tmp_path / "add.onnx", feeds=tmp_path / "feeds.npz")
    message = str(caught.value)
    assert "add.onnx" in message and "\n" not in message
