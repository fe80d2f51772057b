"""Helpers for the OpenCLIP tests: tiny real image folders, the tiny model, a lean subprocess env."""

from __future__ import annotations

import shutil
import socket
import struct
from pathlib import Path

import numpy as np
from PIL import Image

TINY = "negmerge-tiny"


def shape_image(rng: np.random.Generator, label: int, size: int = 24) -> np.ndarray:
    """A coloured shape on noise (square, disc or stripes by label), uint8 HxWx3."""
    yy, xx = np.mgrid[:size, :size]
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    c = size // 2 + rng.integers(-3, 4, 2)
    if label % 3 == 0:
        mask = (abs(yy - c[0]) < 6) & (abs(xx - c[1]) < 6)
    elif label % 3 == 1:
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 40
    else:
        mask = (xx // 3) % 2 == 0
    image[mask, label % 3] = 220
    return image


def make_image_folder(root: Path, classes=("red_square", "green_disc", "blue_stripes"), per_class: int = 12,
                      size: int = 24, seed: int = 0) -> Path:
    """One sub-folder per class of small PNGs: coloured shapes with noise, drawn with numpy."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shape_image(rng, label, size)).save(folder / f"{i:03d}.png")
    return root


# -- the paper's datasets in their on-disk layouts, tiny ------------------------------------------

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "SeaLake")


def make_eurosat_splits(root: Path, train: int = 10, val: int = 3, test: int = 4, with_val: bool = True) -> Path:
    """task_vectors' ROOT/EuroSAT_splits/{train,val,test}/<class>/ (per-class counts)."""
    splits = {"train": train, "test": test, **({"val": val} if with_val else {})}
    for seed, (split, count) in enumerate(splits.items()):
        make_image_folder(root / "EuroSAT_splits" / split, EUROSAT_CLASSES, per_class=count, seed=seed)
    return root


def make_sun397(root: Path, train: int = 10, val: int = 3, test: int = 5) -> Path:
    """task_vectors' ROOT/sun397/{train,val} (+ a test folder the release never reads)."""
    classes = ("a_abbey", "b_bakery", "c_canyon")
    for seed, (split, count) in enumerate({"train": train, "val": val, "test": test}.items()):
        make_image_folder(root / "sun397" / split, classes, per_class=count, seed=seed)
    return root


DTD_CLASSES = ("banded", "dotted", "striped")


def make_dtd_release(root: Path, per_list: int = 4, seed: int = 0) -> Path:
    """The DTD release in torchvision's layout, ROOT/dtd/dtd/{images,labels}: partition 1's
    train1/val1/test1 lists name interleaved files (as the real ones do), in shuffled order."""
    rng = np.random.default_rng(seed)
    base = root / "dtd" / "dtd"
    lists = {"train1": [], "val1": [], "test1": []}
    for label, name in enumerate(DTD_CLASSES):
        (base / "images" / name).mkdir(parents=True, exist_ok=True)
        numbers = rng.permutation(3 * per_list) + 1
        for index, number in enumerate(numbers):
            file = f"{name}_{number:04d}.jpg"
            Image.fromarray(shape_image(rng, label)).save(base / "images" / name / file, quality=95)
            lists[("train1", "val1", "test1")[index // per_list]].append(f"{name}/{file}")
    (base / "labels").mkdir()
    for listed, lines in lists.items():
        (base / "labels" / f"{listed}.txt").write_text("".join(f"{line}\n" for line in rng.permutation(lines)))
    return root


def make_dtd_folders_from_release(release: Path, root: Path) -> Path:
    """task_vectors' ROOT/dtd/{train,val} as its authors made it from the release: train1 + val1
    into train, test1 into val (and a decoy test folder the release never reads)."""
    base = release / "dtd" / "dtd"
    for folder, lists in (("train", ("train1", "val1")), ("val", ("test1",)), ("test", ("val1",))):
        for listed in lists:
            for line in (base / "labels" / f"{listed}.txt").read_text().split():
                target = root / "dtd" / folder / line
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / "images" / line, target)
    return root


def make_mnist_raw(root: Path, train: int = 40, test: int = 10, seed: int = 0) -> Path:
    """torchvision's MNIST layout, ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte: 28x28 gray shapes."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.stack([shape_image(rng, int(label), 28)[..., label % 3] for label in labels])
        header = lambda magic, *dims: struct.pack(f">{len(dims) + 1}i", magic, *dims)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header(2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header(2049, count) + labels.tobytes())
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
