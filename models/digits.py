"""A small CNN for scikit-learn's handwritten digits (1,797 real 8x8 greyscale images, 10 classes).

Input: N x 1 x 8 x 8 float32, pixel values divided by 16 (the data set's range is 0..16).
The committed weights come from models/train_digits.py; their test accuracy is in weights/digits.json.
"""

from __future__ import annotations

import torch.nn as nn

from deploykit_zoo.digits_data import SPLIT_SEED, TEST_FRACTION, load_digits_split  # noqa: F401  (its old home)


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
