"""The demo's two tasks, generated offline and written as ordinary image folders.

- digits: scikit-learn's 8x8 handwritten digits (shipped with the package), upscaled to 16 px and
  drawn in the red channel only;
- textures: eight procedurally generated texture classes (stripes, checkerboard, dots, rings...)
  drawn in the green and blue channels only.

The disjoint colour channels keep the two tasks' features apart in a tiny network, so forgetting
digits need not cost textures (a design probe found that grey digits and grey textures share too
much of a small model for negation to separate them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from negmerge_cli.core import files
from negmerge_cli.training.digits import read_digits

SIZE = 16
DATA_VERSION = 2  # bump when the generated images change (invalidates cached pretrained models)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXTURE_CLASSES = ("horizontal_stripes", "vertical_stripes", "diagonal_stripes", "antidiagonal_stripes",
                   "checkerboard", "dots", "rings", "blotches")


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, SIZE, SIZE, 3]
    labels: np.ndarray  # int64 [N]


def digits() -> dict[str, Split]:
    """The shipped digits (train/test as packaged), red on black."""
    return {split: Split(_red(images), labels.astype(np.int64)) for split, (images, labels) in read_digits().items()}


def textures(train: int = 4000, test: int = 1000) -> dict[str, Split]:
    return {"train": _textures(train, seed=1), "test": _textures(test, seed=3)}


def class_names(folders: tuple[str, ...]) -> tuple[str, ...]:
    """Folder names as the prompts use them (the folder reader turns underscores into spaces)."""
    from negmerge_cli.clip.classnames import folder_name

    return tuple(folder_name(f) for f in folders)


def write_image_folder(root: Path, splits: dict[str, Split], classes: tuple[str, ...]) -> Path:
    """ROOT/{train,test}/<class>/<index>.png: the layout ``--data ROOT`` reads."""
    for split, data in splits.items():
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(data.images, data.labels)):
            with files.PendingFile(root / split / classes[label] / f"{index:05d}.png", owned=True, sync=False) as png:
                Image.fromarray(image, "RGB").save(png.handle, format="PNG")
    return root


def _red(gray8: np.ndarray) -> np.ndarray:
    images = torch.tensor(gray8, dtype=torch.float32).unsqueeze(1) / 255.0
    images = F.interpolate(images, size=SIZE, mode="bilinear", align_corners=False).clamp(0, 1)
    rgb = torch.zeros(len(images), SIZE, SIZE, 3)
    rgb[..., 0] = images[:, 0]
    return (rgb * 255).round().to(torch.uint8).numpy()


def _textures(count: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(TEXTURE_CLASSES)
    rng.shuffle(labels)
    gray = np.stack([_texture(int(label), rng) for label in labels])
    mix = rng.uniform(0.6, 1.0, (count, 1, 1, 2))
    rgb = np.zeros((count, SIZE, SIZE, 3), np.float32)
    rgb[..., 1:] = gray[..., None] * mix
    return Split((rgb * 255).round().astype(np.uint8), labels.astype(np.int64))


def _texture(label: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    frequency, phase = rng.uniform(0.12, 0.3), rng.uniform(0, 2 * np.pi)
    wave = lambda t: np.sin(2 * np.pi * frequency * t + phase)
    if label == 0:
        value = wave(y)
    elif label == 1:
        value = wave(x)
    elif label == 2:
        value = wave((x + y) / np.sqrt(2))
    elif label == 3:
        value = wave((x - y) / np.sqrt(2))
    elif label == 4:
        value = np.sign(wave(x) * np.sin(2 * np.pi * frequency * y + rng.uniform(0, 2 * np.pi)))
    elif label == 5:
        grid = np.cos(2 * np.pi * frequency * x + phase) * np.cos(2 * np.pi * frequency * y + rng.uniform(0, 2 * np.pi))
        value = np.where(grid > 0.5, 1.0, -1.0)
    elif label == 6:
        cx, cy = rng.uniform(2, SIZE - 2, 2)
        value = wave(np.sqrt((x - cx) ** 2 + (y - cy) ** 2))
    else:
        coarse = torch.tensor(rng.standard_normal((1, 1, *[int(rng.integers(3, 6))] * 2)), dtype=torch.float32)
        value = np.sign(F.interpolate(coarse, size=SIZE, mode="bicubic", align_corners=False)[0, 0].numpy())
    contrast = rng.uniform(0.5, 1.0)
    value = 0.5 + 0.5 * contrast * value + rng.normal(0, 0.08, value.shape)
    return np.clip(value, 0, 1).astype(np.float32)
