"""A small CNN for scikit-learn's handwritten digits (1,797 real 8x8 greyscale images, 10 classes).

Input: N x 1 x 8 x 8 float32, pixel values divided by 16 (the data set's range is 0..16).
The committed weights come from models/train_digits.py; their test accuracy is in weights/digits.json.
"""

from __future__ import annotations

import torch.nn as nn

SPLIT_SEED = 0
TEST_FRACTION = 0.2


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(inplace=True), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def digits_cnn() -> DigitsCNN:
    return DigitsCNN()


def load_digits_split():
    """(x_train, y_train, x_test, y_test) as float32 N x 1 x 8 x 8 arrays in [0, 1] and int64 labels.

    The split is stratified with a fixed seed, so every caller sees the same test set.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        from deploykit.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "the digits data set needs scikit-learn: pip install 'deploykit[digits]'"
        ) from None
    import numpy as np

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test
