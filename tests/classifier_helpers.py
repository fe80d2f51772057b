"""Helpers for the classifier tests: tiny datasets in the exact on-disk layouts the classifier
readers take (CIFAR python pickles and binary batches, Tiny-ImageNet)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def make_cifar10_python(root: Path, n_per_batch: int = 6, seed: int = 0) -> dict:
    """cifar-10-batches-py as torchvision's download has it: pickled dicts of bytes keys; the
    (data, labels) written per batch name."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in CIFAR10_TRAIN_BATCHES + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        write_cifar_batch(folder / name, data, labels, name)
        batches[name] = (data, labels)
    return batches


def write_cifar_batch(path: Path, data: np.ndarray, labels, name: str = "batch", label_key: bytes = b"labels") -> Path:
    """One CIFAR python batch: a pickled dict with bytes keys, ``labels`` as given (any values)."""
    path.write_bytes(pickle.dumps({b"batch_label": name.encode(), label_key: labels, b"data": data}))
    return path


def make_cifar10_binary(root: Path, n_per_batch: int = 4, seed: int = 1) -> Path:
    """cifar-10-batches-bin: records of one label byte and 3,072 image bytes; the folder."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"{batch}.bin" for batch in CIFAR10_TRAIN_BATCHES] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (n_per_batch, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (folder / name).write_bytes(records.tobytes())
    return folder


def make_tinyimagenet(root: Path, wnids=("n01", "n02", "n03"), per_class: int = 2, size: int = 8) -> Path:
    """The Tiny-ImageNet layout, tiny: train/WNID/images/*.png, val/images + val_annotations.txt
    (each val image labelled with the next class); the tiny-imagenet-200 folder."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    annotations = []
    for label, wnid in enumerate(wnids):
        (base / "train" / wnid / "images").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 40 * label + i, dtype=np.uint8)
            Image.fromarray(pixels).save(base / "train" / wnid / "images" / f"{wnid}_{i}.png")
            name = f"val_{label}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            annotations.append(f"{name}\t{wnids[(label + 1) % len(wnids)]}\t0\t0\t{size}\t{size}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return base
