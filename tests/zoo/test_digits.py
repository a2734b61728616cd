"""The trained digits model: real accuracy, identical through Engine and PyTorch."""

import json

import numpy as np
import torch

from deploykit import Engine
from deploykit.zoo import load_model
from deploykit_zoo import ZOO
from deploykit_zoo.digits import load_digits_split


def test_digits_accuracy_through_engine_equals_pytorch(exported):
    path, _ = exported("digits")
    _, _, x_test, y_test = load_digits_split()
    onnx_pred = Engine(path, providers="cpu")(x_test).argmax(1)
    with torch.inference_mode():
        torch_pred = load_model("digits").module(torch.from_numpy(x_test)).argmax(1).numpy()
    assert len(y_test) == 360
    assert np.array_equal(onnx_pred, torch_pred)
    accuracy = float((onnx_pred == y_test).mean())
    assert accuracy >= 0.97
    recorded = json.loads((ZOO["digits"].weights_path.with_suffix(".json")).read_text())
    assert abs(recorded["test_accuracy"] - accuracy) < 1e-9


def test_committed_weights_are_small():
    assert ZOO["digits"].weights_path.stat().st_size < 500_000
