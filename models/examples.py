"""Single-layer examples from the cs231n notes, for the README and the tests.

    deploykit export models/examples.py:inception_5x5 --input-shape 1,192,28,28 -o inception_5x5.onnx
"""

import torch.nn as nn


def inception_5x5() -> nn.Module:
    """The notes' Inception example: a 28x28x192 volume through a 5x5 conv to 32 channels (120,422,400 MACs)."""
    return nn.Sequential(nn.Conv2d(192, 32, kernel_size=5, padding=2))


def with_batchnorm_and_dropout() -> nn.Module:
    """A block as a training-mode export leaves it: Conv, BatchNorm, ReLU, Dropout."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Conv2d(16, 8, 3, padding=1))
