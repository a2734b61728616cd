"""Reproduce models/weights/digits.pt: train DigitsCNN on scikit-learn's digits.

    python models/train_digits.py            # writes weights/digits.pt and weights/digits.json

Deterministic on one thread with a fixed seed; takes a few seconds on a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits import DigitsCNN  # noqa: E402
from digits_data import SPLIT_SEED, TEST_FRACTION, load_digits_split  # noqa: E402

SEED = 1234
EPOCHS = 40
BATCH = 64


def train(out_dir: Path = HERE / "weights") -> dict:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_digits_split()
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x_train))
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            # Small random shifts make the net robust to the 1-pixel misalignments in the data.
            xb = torch.roll(x_train[idx], shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))
            opt.zero_grad()
            loss_fn(model(xb), y_train[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    accuracy = float((pred == y_test).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "digits.pt")
    record = {
        "model": "DigitsCNN (models/digits.py)",
        "data": "sklearn.datasets.load_digits, stratified split",
        "test_fraction": TEST_FRACTION,
        "split_seed": SPLIT_SEED,
        "train_seed": SEED,
        "epochs": EPOCHS,
        "test_images": int(len(y_test)),
        "test_accuracy": accuracy,
        "torch_version": torch.__version__,
    }
    (out_dir / "digits.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    print(json.dumps(train(), indent=2))
