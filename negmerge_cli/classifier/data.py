"""Class-labelled image data for the classifier family, held in memory as uint8 arrays.

Specs (``--data``):

- ``digits``: scikit-learn's 8x8 digits shipped with the package (1,438 train / 359 test), as
  3-channel 8x8 images; for tests and the demo.
- ``cifar10:ROOT`` / ``cifar100:ROOT``: torchvision's ``cifar-10-batches-py`` /
  ``cifar-100-python`` folders under ROOT (or ROOT itself), or the binary ``cifar-10-batches-bin``.
  The pickles are read by an allow-list unpickler that only rebuilds numpy arrays: anything else a
  pickle asks for is refused before it runs.
- ``tinyimagenet:ROOT``: the ``tiny-imagenet-200`` folder under ROOT (or ROOT itself): ``wnids.txt``
  (label order), ``train/WNID/images/``, and ``val/images/`` labelled by ``val/val_annotations.txt``;
  its val split is the test split (the test images have no labels), as in the literature.
- ``PATH``: an image folder with ``train/`` and ``test/`` sub-folders of class folders (ImageFolder
  order: sorted class names are labels 0..C-1); all images must have one size.

Every dataset is checked as it is opened (:mod:`negmerge_cli.training.data_checks`): CIFAR labels are
integers in 0..C-1 (checked per batch file), names from ``wnids.txt`` and ``val_annotations.txt``
are plain names, and every path built from them stays inside ROOT (symlinks are followed).

Transforms: train = random crop with 4-pixel zero padding + horizontal flip (no flip for digits,
whose mirror images are other shapes), then per-channel normalisation; test = normalisation only.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negmerge_cli.core import files, safe_pickle
from negmerge_cli.core.errors import NegmergeError, UsageError
from negmerge_cli.training.data_checks import Confinement, check_plain_name, checked_labels
from negmerge_cli.training.digits import read_digits

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
# Per-channel statistics of the training sets (the literature's constants for CIFAR)
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
_ROOTED = ("cifar10", "cifar100", "tinyimagenet")  # NAME:ROOT specs
_DEFAULT_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PAD = 4  # random-crop padding of the literature's CIFAR augmentation


@dataclass
class Augment:
    crop: bool = True
    flip: bool = True

    @property
    def name(self) -> str:
        return "-".join(part for part, on in (("crop", self.crop), ("flip", self.flip)) if on) or "none"


AUGMENTATIONS = ("crop-flip", "crop", "none")  # finetune --augment: pad-4 random crop (+ horizontal flip), or none


def augment_named(name: str) -> Augment | None:
    """``--augment NAME`` (one of AUGMENTATIONS) as the dataset's training transform."""
    return None if name == "none" else Augment(crop=True, flip=name == "crop-flip")


def augment_name(augment: Augment | None) -> str:
    return "none" if augment is None else augment.name


class ImageArrayDataset:
    """(image tensor CxHxW float, label) pairs from uint8 NxHxWxC ``images``; ``augment`` draws from
    torch's global generator (seeded by the trainer), so an epoch's crops are reproducible."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, augment: Augment | None = None):
        import torch

        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N,C,H,W uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(255)
        if self.augment is not None:
            image = _augment(image, self.augment)
        return (image - self.mean) / self.std, int(self.labels[index])

    def with_augment(self, augment: Augment | None) -> "ImageArrayDataset":
        view = object.__new__(ImageArrayDataset)
        view.__dict__.update(self.__dict__, augment=augment)
        return view


def _augment(image, augment: Augment):
    import torch
    import torch.nn.functional as F

    if augment.crop:
        height, width = image.shape[1:]
        padded = F.pad(image, (PAD, PAD, PAD, PAD))
        top, left = (int(v) for v in torch.randint(0, 2 * PAD + 1, (2,)))
        image = padded[:, top:top + height, left:left + width]
    if augment.flip and bool(torch.rand(()) < 0.5):
        image = image.flip(-1)
    return image


@dataclass
class ClassifierData:
    name: str
    root: str | None
    train: ImageArrayDataset
    test: ImageArrayDataset
    num_classes: int
    identity: dict = field(default_factory=dict)
    # Tiny-ImageNet: imagefolder_order[p] is the index here of torchvision ImageFolder's p-th training
    # sample (class folders and files sorted by name), the numbering the SalUn protocol draws in
    imagefolder_order: np.ndarray | None = None

    def train_eval_view(self) -> ImageArrayDataset:
        """The train split with the test-time transform (for Dr/Df accuracy and MIA)."""
        return self.train.with_augment(None)

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.labels.numpy()


def open_classifier_data(spec: str) -> ClassifierData:
    name, root = _parse(spec)
    if name == "digits":
        arrays = _read_digits()
    elif name in ("cifar10", "cifar100"):
        arrays = _read_cifar(name, root)
    elif name == "tinyimagenet":
        arrays = _read_tinyimagenet(root, Confinement(root, spec))
    else:
        arrays = _read_folder(root, Confinement(root, spec))
    return _assemble(name, root, *arrays)


def _parse(spec: str) -> tuple[str, Path | None]:
    if spec == "digits":
        return "digits", None
    head, sep, rest = spec.partition(":")
    if sep and head in _ROOTED:
        if not rest:
            raise UsageError(f"--data {spec}: give the dataset root after '{head}:'")
        return head, Path(rest)
    if sep and head.isalpha() and len(head) > 1 and not Path(spec).exists():
        raise UsageError(f"--data {spec}: unknown dataset '{head}' (classifier data: digits, cifar10:ROOT, cifar100:ROOT, tinyimagenet:ROOT, PATH)")
    return "folder", Path(spec)


def _assemble(name, root, train_x, train_y, test_x, test_y, num_classes: int | None = None,
              imagefolder_order: np.ndarray | None = None) -> ClassifierData:
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    mean, std = _STATS.get(name, _DEFAULT_STATS)
    augment = Augment(crop=True, flip=name != "digits")
    identity = {
        "dataset": name,
        "root": str(root) if root is not None else None,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "num_classes": num_classes,
        "train_labels_sha256": hashlib.sha256(np.ascontiguousarray(train_y, dtype=np.int64).tobytes()).hexdigest(),
    }
    return ClassifierData(name, identity["root"], ImageArrayDataset(train_x, train_y, mean, std, augment),
                          ImageArrayDataset(test_x, test_y, mean, std), num_classes, identity, imagefolder_order)


def _read_digits():
    splits = read_digits()
    as_rgb = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731 -- 8x8 gray -> 8x8x3 uint8
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    return as_rgb(train_x), train_y, as_rgb(test_x), test_y


# -- CIFAR -------------------------------------------------------------------------------------

_CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", 100),
}


def _read_cifar(name: str, root: Path):
    folder_name, train_files, test_file, label_key, num_classes = _CIFAR_LAYOUTS[name]
    for folder in (root / folder_name, root):
        if (folder / test_file).exists():
            read = lambda path: _read_cifar_pickle(path, label_key)  # noqa: E731
            return (*_read_batches([folder / f for f in train_files], read, repr(label_key), num_classes),
                    *_read_batches([folder / test_file], read, repr(label_key), num_classes), num_classes)
    if name == "cifar10":
        for folder in (root / "cifar-10-batches-bin", root):
            if (folder / "test_batch.bin").exists():
                train_files = [folder / f"data_batch_{i}.bin" for i in range(1, 6)]
                return (*_read_batches(train_files, _read_cifar_binary, "label bytes", 10),
                        *_read_batches([folder / "test_batch.bin"], _read_cifar_binary, "label bytes", 10), 10)
    raise NegmergeError(f"{root}: no {folder_name}/{test_file} here (from --data {name}:{root})")


def _read_batches(paths: list[Path], read, label_field: str, num_classes: int):
    """The images and labels of CIFAR batch files, in order; each file's labels are checked as it
    is read (integers in 0..num_classes-1), so a bad one is named with its file."""
    images, labels = [], []
    for path in paths:
        batch_images, batch_labels = read(path)
        images.append(batch_images)
        labels.append(checked_labels(batch_labels, num_classes, str(path), label_field))
    return np.concatenate(images), np.concatenate(labels)


@functools.lru_cache(maxsize=1)
def _cifar_globals() -> dict[str, object]:
    """What a CIFAR batch's pickle may name: numpy's array reconstruction (under numpy 1's and 2's
    module names), nothing else."""
    reconstruct, scalar = np.ndarray.__reduce__(np.zeros(1))[0], np.float64(0).__reduce__()[0]
    found = {f"{module}.{name}": value for module in ("numpy.core.multiarray", "numpy._core.multiarray")
             for name, value in (("_reconstruct", reconstruct), ("scalar", scalar))}
    return {**found, "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "_codecs.encode": codecs.encode,
            "codecs.encode": codecs.encode}


def _read_cifar_pickle(path: Path, label_key: str):
    data = files.read_bytes(path, limit=1 << 30, what="a CIFAR batch")
    with safe_pickle.failures_as(path, "CIFAR batch"):
        batch = safe_pickle.load(io.BytesIO(data), _cifar_globals().get, encoding="latin1")
    return _cifar_arrays(batch, label_key, path)


def _cifar_arrays(batch, label_key: str, path: Path):
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()} if isinstance(batch, dict) else None
    if batch is None or "data" not in batch or label_key not in batch:
        raise NegmergeError(f"{path}: not a CIFAR batch (expected a dict with 'data' and '{label_key}')")
    try:
        images, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged or nested beyond arrays
        raise NegmergeError(f"{path}: 'data' and '{label_key}' must be arrays (an image and a label per row)") from None
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072 or labels.shape != (len(images),):
        raise NegmergeError(f"{path}: 'data' must be uint8 N x 3072 with one label per row (got {images.dtype} {list(images.shape)})")
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), batch[label_key]  # as stored: _read_batches checks it


def _read_cifar_binary(path: Path):
    raw = np.frombuffer(files.read_bytes(path, limit=1 << 30, what="a CIFAR batch"), dtype=np.uint8)
    if raw.size % 3073:
        raise NegmergeError(f"{path}: size is not a multiple of 3,073 bytes (label + 32x32x3 image)")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0].astype(np.int64)


# -- image folders -----------------------------------------------------------------------------


def _read_folder(root: Path, inside: Confinement):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise NegmergeError(f"{root}: not a dataset (expected a digits/cifar10:ROOT/cifar100:ROOT spec or a folder with train/ and test/)")
    classes = sorted(e.name for e in (root / "train").iterdir() if e.is_dir() and not e.name.startswith("."))
    train_x, train_y = _read_class_folders(root / "train", classes, inside)
    test_x, test_y = _read_class_folders(root / "test", classes, inside)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise NegmergeError(f"{root}: train and test images differ in size")
    return train_x, train_y, test_x, test_y, len(classes)


def _read_class_folders(folder: Path, classes: list[str], inside: Confinement):
    return _read_images(_list_class_folders(folder, classes), inside)


def _list_class_folders(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    listed = [(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
              for path in sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)]
    if not listed:
        raise NegmergeError(f"{folder}: no images found (expected one sub-folder per class)")
    return listed


def _imagefolder_order(listed: list[tuple[Path, int]], classes: list[str]) -> np.ndarray:
    """Where torchvision's ImageFolder puts each listed sample: class folders by sorted name, then
    ``sorted(os.walk(...))`` (sub-folders by path) and sorted file names; ``order[p]`` = our index."""
    keys = [(classes[label], str(path.parent), path.name) for path, label in listed]
    return np.asarray(sorted(range(len(listed)), key=keys.__getitem__), dtype=np.int64)


def _read_images(listed: list[tuple[Path, int]], inside: Confinement):
    """(path, label) pairs as one uint8 array of same-sized RGB images and their labels; every
    path is checked to lie inside the dataset's root before any image is read."""
    from PIL import Image

    for path, _ in listed:
        inside.check(path)
    images = []
    for path, _ in listed:
        try:
            with Image.open(io.BytesIO(files.read_bytes(path, what="an image"))) as image:
                images.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError):
            raise NegmergeError(f"{path}: not a readable image") from None
        if images[-1].shape != images[0].shape:
            raise NegmergeError(f"{path}: size {images[-1].shape[1]}x{images[-1].shape[0]} differs from the first image's "
                                f"{images[0].shape[1]}x{images[0].shape[0]}")
    return np.stack(images), np.asarray([label for _, label in listed], dtype=np.int64)


# -- Tiny-ImageNet -----------------------------------------------------------------------------


def _read_tinyimagenet(root: Path, inside: Confinement):
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    wnids_file, annotations = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for needed in (wnids_file, base / "train", annotations):
        if not needed.exists():
            raise NegmergeError(f"{base}: not Tiny-ImageNet ({needed.relative_to(base)} is missing)")
    lines = files.read_text(wnids_file).splitlines()
    wnids = [check_plain_name(line.strip(), f"{wnids_file}: line {number}")
             for number, line in enumerate(lines, 1) if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise NegmergeError(f"{wnids_file}: expected distinct class ids, one per line")
    listed_train = _list_class_folders(base / "train", wnids)
    train_x, train_y = _read_images(listed_train, inside)
    labels = {wnid: label for label, wnid in enumerate(wnids)}
    listed = []
    for number, line in enumerate(files.read_text(annotations).splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in labels:
            raise NegmergeError(f"{annotations}: line {number}: expected 'IMAGE<TAB>WNID...' with a class of wnids.txt")
        image = check_plain_name(fields[0], f"{annotations}: line {number}")
        listed.append((base / "val" / "images" / image, labels[fields[1]]))
    if not listed:
        raise NegmergeError(f"{annotations}: no images listed")
    test_x, test_y = _read_images(listed, inside)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise NegmergeError(f"{base}: train and val images differ in size")
    return train_x, train_y, test_x, test_y, len(wnids), _imagefolder_order(listed_train, wnids)
