"""Classifier datasets: ``digits`` (shipped 8x8 scikit-learn digits, as 3-channel tensors)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from negmerge_cli.errors import UsageError, option

DIGITS_FILE = Path(__file__).resolve().parent.parent / "clip" / "data" / "digits.npz"


@dataclass
class ClassifierData:
    train: object
    test: object
    num_classes: int
    identity: dict

    def train_eval_view(self):
        return self.train  # digits: no training-time augmentation, one transform


def open_classifier_data(spec: str) -> ClassifierData:
    if spec != "digits":
        raise UsageError(f"{option('data')} {spec!r}: unknown dataset spec (digits)")
    return _digits()


def _digits() -> ClassifierData:
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    with np.load(DIGITS_FILE) as arrays:  # shipped with the package
        data = {k: arrays[k] for k in arrays.files}

    def images(key):  # [n, 8, 8] uint8 -> [n, 3, 8, 8] in [-1, 1]
        x = torch.from_numpy(data[key]).float().div(255).sub(0.5).div(0.5)
        return x[:, None].repeat(1, 3, 1, 1)

    train_labels = torch.from_numpy(data["train_labels"]).long()
    identity = {"name": "digits", "root": None, "n_train": len(train_labels), "n_test": len(data["test_labels"]),
                "num_classes": 10,
                "train_labels_sha256": hashlib.sha256(data["train_labels"].astype("int64").tobytes()).hexdigest()}
    return ClassifierData(TensorDataset(images("train_images"), train_labels),
                          TensorDataset(images("test_images"), torch.from_numpy(data["test_labels"]).long()),
                          10, identity)
