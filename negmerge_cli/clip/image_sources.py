"""Where a dataset's images come from: indexable ``(PIL image, label)`` sources, each with a
``listing()`` of its image paths and labels for the checks made when a dataset is opened, and the
openers of the two layouts every dataset kind reuses (the built-in digits, image folders).

Image files are read through :func:`read_image`: a regular file only, and anything unreadable is
one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from negmerge_cli.clip import classnames as names
from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.training.digits import read_digits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Sources:
    """What an opener found: a source per split, the class names, and where each split comes from."""

    train: object
    test: Optional[object]
    classnames: Sequence[str]
    train_from: str
    test_from: Optional[str] = None
    val: Optional[object] = None  # a separate Val folder; None: the seeded hold-out of train
    val_from: Optional[str] = None
    folders: Sequence[str] = ()  # the class folder of each label, where classes are folders


# --- sources: indexable (PIL image, label) collections ------------------------------------------


class DigitsSource:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i], mode="L"), int(self.labels[i])

    def listing(self):
        return None, self.labels


class FileSource:
    """(path, label) pairs decoded with PIL; an unreadable file is a one-line error naming it."""

    def __init__(self, samples: Sequence[tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return open_image(path), label

    def listing(self):
        """(image paths, labels), as the check of an opened dataset reads them (clip/datasets.py)."""
        return [path for path, _ in self.samples], [label for _, label in self.samples]


class TorchvisionSource:
    def __init__(self, dataset, spec_text: str, labels_file: Optional[Path] = None):
        self.dataset, self.spec_text = dataset, spec_text
        self.labels_file = labels_file  # the file its labels were read from, for messages

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            image, label = self.dataset[i]
        except (OSError, ValueError, SyntaxError) as exc:
            raise NegmergeError(f"{self.spec_text}: cannot read image {i} ({exc})") from None
        return image, int(label)

    def listing(self):
        """(image paths or None, labels) from the lists torchvision built, without reading an image."""
        dataset = self.dataset
        for attribute in ("_samples", "samples"):  # GTSRB and StanfordCars; ImageFolder (EuroSAT)
            if hasattr(dataset, attribute):
                pairs = getattr(dataset, attribute)
                return [str(path) for path, _ in pairs], [label for _, label in pairs]
        if hasattr(dataset, "_image_files"):  # SUN397
            return [str(path) for path in dataset._image_files], list(dataset._labels)
        return None, np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels)  # MNIST, SVHN


def open_image(path: str) -> Image.Image:
    with read_image(path) as image:
        image.load()
        return image


@contextlib.contextmanager
def read_image(path: str):
    """A PIL image of a regular file (a FIFO would hang a loader worker); anything unreadable is
    one line naming the file. Not registered as an input one by one: the images' folder is
    (``register_input_tree``), rather than possibly a million files."""
    fd = files.open_regular(path, register=False)
    try:
        with os.fdopen(fd, "rb") as handle, Image.open(handle) as image:
            yield image
    except UnidentifiedImageError:
        raise NegmergeError(f"{path}: cannot read image (not an image, or a format PIL does not know)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NegmergeError(f"{path}: cannot read image ({reason})") from None


def check_image_header(path: str) -> None:
    """Open ``path`` as an image and read its header, not its pixels."""
    with read_image(path):
        pass


# --- the layouts every dataset kind reuses --------------------------------------------------------


def open_digits() -> Sources:
    splits = read_digits()
    train, test = DigitsSource(*splits["train"]), DigitsSource(*splits["test"])
    return Sources(train, test, names.DIGITS, "digits train (1,438)", "digits test (359)")


def open_folder_dataset(root: Path, to_classname: Callable[[str], str], test_names: Sequence[str] = ("test", "val"),
                         val_name: Optional[str] = None) -> Sources:
    """ROOT/train (+ the first of ``test_names`` present as the test split, + ``val_name`` as a
    separate Val folder), or ROOT itself with class folders."""
    if not root.is_dir():
        raise NegmergeError(f"{root}: dataset folder does not exist")
    if not (root / "train").is_dir():
        train, classes = scan_class_folders(root)
        return Sources(train, None, tuple(to_classname(c) for c in classes), f"{root.name} folder", folders=classes)
    train, classes = scan_class_folders(root / "train")
    test_dir = next((root / s for s in test_names if (root / s).is_dir()), None)
    val_dir = root / val_name if val_name and (root / val_name).is_dir() else None
    scan = lambda folder: scan_class_folders(folder, classes)[0] if folder else None
    describe = lambda folder: f"{root.name}/{folder.name} folder" if folder else None
    return Sources(train, scan(test_dir), tuple(to_classname(c) for c in classes), describe(root / "train"),
                   describe(test_dir), scan(val_dir), describe(val_dir), folders=classes)


def scan_class_folders(root: Path, classes: Optional[Sequence[str]] = None):
    """torchvision ImageFolder's rule: sorted sub-folders are classes 0..C-1; files sorted within."""
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    classes = list(classes) if classes is not None else found
    samples = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            samples += [(str(p), label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise NegmergeError(
            f"{root}: no images found (expected one sub-folder per class holding {', '.join(IMAGE_EXTENSIONS[:3])}... files)"
        )
    return FileSource(samples), classes
