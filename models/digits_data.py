"""scikit-learn's handwritten digits as the digits CNN sees them, and the one fixed train/test split.

Apart from models/digits.py, which defines the network, because reading the data needs no torch:
`--calibration digits` and `--validate digits` work where only the ONNX side is installed.
"""

from __future__ import annotations

SPLIT_SEED = 0
TEST_FRACTION = 0.2


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
