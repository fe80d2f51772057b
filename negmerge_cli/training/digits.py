"""The built-in digits data both families, the demos and the tests train on offline:
``data/digits.npz`` (8x8 grey images, train 1,438 and test 359; source in ``data/ATTRIBUTION.txt``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS_FILE = Path(__file__).parent / "data" / "digits.npz"


def read_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}``: uint8 images [N, 8, 8], labels [N]."""
    with np.load(DIGITS_FILE) as data:
        return {split: (data[f"{split}_images"], data[f"{split}_labels"]) for split in ("train", "test")}
