"""The trained digits model: real accuracy, identical through Engine and PyTorch."""

import json

import numpy as np
import torch

from deploykit import Engine
from deploykit.zoo import load_zoo_model
from deploykit_zoo import ZOO
from deploykit_zoo.digits_data import load_digits_split


def test_digits_accuracy_through_engine_equals_pytorch(exported):
    path, _ = exported("digits")
    _, _, x_test, y_test = load_digits_split()
    onnx_pred = Engine(path, providers="cpu")(x_test).argmax(1)
    with torch.inference_mode():
        torch_pred = load_zoo_model("digits").module(torch.from_numpy(x_test)).argmax(1).numpy()
    assert len(y_test) == 360
    assert np.array_equal(onnx_pred, torch_pred)
    accuracy = float((onnx_pred == y_test).mean())
    assert accuracy >= 0.97
    recorded = json.loads((ZOO["digits"].weights_path.with_suffix(".json")).read_text())
    assert abs(recorded["test_accuracy"] - accuracy) < 1e-9


def test_committed_weights_are_small():
    assert ZOO["digits"].weights_path.stat().st_size < 500_000


def test_the_digits_data_loads_where_torch_is_not_installed():
    """--calibration digits and --validate digits on a machine with only the ONNX side installed: torch
    is made unimportable in a fresh interpreter, as it is in a base `pip install deploykit`."""
    import subprocess
    import sys

    script = ("import sys\n"
              "class NoTorch:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'torch':\n"
              "            raise ImportError('torch is not installed here')\n"
              "sys.meta_path.insert(0, NoTorch())\n"
              "from deploykit.calibration import load_calibration\n"
              "x = load_calibration('digits', None, (1, 1, 8, 8))\n"
              "print(x.shape, x.dtype)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(", 1, 8, 8) float32")
