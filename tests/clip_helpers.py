"""Helpers for the OpenCLIP tests: tiny real image folders, the tiny model, a lean subprocess env."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
from PIL import Image

TINY = "negmerge-tiny"


def make_image_folder(root: Path, classes=("red_square", "green_disc", "blue_stripes"), per_class: int = 12,
                      size: int = 24, seed: int = 0) -> Path:
    """One sub-folder per class of small PNGs: coloured shapes with noise, drawn with numpy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            c = size // 2 + rng.integers(-3, 4, 2)
            if label % 3 == 0:
                mask = (abs(yy - c[0]) < 6) & (abs(xx - c[1]) < 6)
            elif label % 3 == 1:
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 40
            else:
                mask = (xx // 3) % 2 == 0
            image[mask, label % 3] = 220
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
