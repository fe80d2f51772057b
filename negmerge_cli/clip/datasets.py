"""Dataset specs: one string names a dataset and its split everywhere.

    digits                      scikit-learn's 8x8 digits, shipped with the package (no download)
    PATH                        an image folder: one sub-folder per class (or PATH/train + PATH/test)
    NAME:ROOT                   a paper dataset read from ROOT in torchvision's (or task_vectors') layout
    ...:train | :val | :test    the split; ``val`` is the paper's Val hold-out of the training set

The paper's Val split (task_vectors ``split_train_into_train_val``): a random 10% of the training
set, at most 5,000 images, drawn with ``torch.randperm`` seeded 0 exactly as ``random_split`` draws
it; ``train`` is the rest, so fine-tuning never sees a Val image. Where the release reads a separate
Val folder instead (``EuroSAT_splits/val``), Val is that folder and ``train`` is all of the train
folder. Every :class:`ImageSet` says where its images come from (``split_source``).

A dataset is checked once as it is opened (:func:`_check_sources`, before any image is read): its
labels are integers naming one of its classes, and its image files lie inside ROOT.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from negmerge_cli.clip import classnames as names
from negmerge_cli.clip import templates as prompts
from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError, UsageError
from negmerge_cli.training.data_checks import Confinement, check_plain_name, checked_labels
from negmerge_cli.training.digits import read_digits

PAPER_DATASETS = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn", "imagenet")
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
VAL_MAX = 5000
VAL_SEED = 0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DATA_SUFFIXES = IMAGE_EXTENSIONS + (".txt", ".csv", ".mat")  # what a dataset folder is read for
# The release upsamples these to the model's size and makes them 3-channel gray before RandAugment.
GRAYSCALE_BEFORE_RANDAUG = ("mnist",)

# Epochs of the paper (with RandAugment) and of the older task-arithmetic runs (without).
PAPER_EPOCHS_AUG = {"cars": 70, "dtd": 100, "eurosat": 40, "gtsrb": 40, "mnist": 30, "resisc45": 40,
                    "sun397": 40, "svhn": 30}
PAPER_EPOCHS_NOAUG = {"cars": 35, "dtd": 76, "eurosat": 12, "gtsrb": 11, "mnist": 5, "resisc45": 15,
                      "sun397": 14, "svhn": 4}


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "digits", "folder" or one of PAPER_DATASETS
    root: Optional[Path]
    split: Optional[str]  # None: the command's default
    text: str  # as the user wrote it, for messages and JSON

    @property
    def name(self) -> str:
        """Readable dataset name for tables and JSON (kind, or the folder's name)."""
        return self.root.name if self.kind == "folder" and self.root else self.kind


def protect(spec: DatasetSpec) -> None:
    """Make the dataset's files (images, split lists, annotations) inputs of the current operation:
    no output may replace one of them."""
    if spec.root is not None:
        files.register_input_tree(spec.root, DATA_SUFFIXES)


def parse_spec(text: str) -> DatasetSpec:
    """``digits``, ``PATH``, ``NAME:ROOT``, each with an optional ``:train``/``:val``/``:test``."""
    body, split = text, None
    head, _, tail = text.rpartition(":")
    if head and tail in SPLITS:
        body, split = head, tail
    if not body:
        raise UsageError(f"empty dataset spec {text!r}")
    if body == "digits":
        return DatasetSpec("digits", None, split, text)
    kind, sep, root = body.partition(":")
    if sep and kind.lower() in PAPER_DATASETS:
        if not root:
            raise UsageError(f"dataset spec {text!r}: give the local root, e.g. {kind}:/data")
        return DatasetSpec(kind.lower(), Path(root).expanduser(), split, text)
    if body.lower() in PAPER_DATASETS:
        raise UsageError(f"dataset spec {text!r}: {body} needs a local root, e.g. {body}:/data (nothing is downloaded)")
    return DatasetSpec("folder", Path(body).expanduser(), split, text)


def val_split_indices(n: int, seed: int = VAL_SEED) -> tuple[list[int], list[int]]:
    """(train, val) indices of the paper's Val rule over a training set of n images."""
    val_size = min(int(n * VAL_FRACTION), VAL_MAX)
    if val_size <= 0 or val_size >= n:
        raise UsageError(f"a training set of {n} images is too small for a 10% Val split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[: n - val_size], order[n - val_size :]


# --- sources: indexable (PIL image, label) collections ------------------------------------------


class _DigitsSource:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i], mode="L"), int(self.labels[i])

    def listing(self):
        return None, self.labels


class _FileSource:
    """(path, label) pairs decoded with PIL; an unreadable file is a one-line error naming it."""

    def __init__(self, samples: Sequence[tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return open_image(path), label

    def listing(self):
        """(image paths, labels), as :func:`_check_sources` checks them."""
        return [path for path, _ in self.samples], [label for _, label in self.samples]


class _TorchvisionSource:
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
    with _read_image(path) as image:
        image.load()
        return image


@contextlib.contextmanager
def _read_image(path: str):
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


def check_images(data: "ImageSet", threads: int = 8) -> None:
    """Open every image file of ``data`` and read its header (not its pixels): a file that is not
    an image, or not a regular file, fails here in one line, before a command writes anything.
    Sources in torchvision's layouts are left out: torchvision opens their files itself."""
    if not isinstance(data.source, _FileSource):
        return
    order = data.indices if data.indices is not None else range(len(data.source))
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(_check_image_header, (data.source.samples[i][0] for i in order)):
            pass  # map raises the first failure in order


def _check_image_header(path: str) -> None:
    with _read_image(path):
        pass


# --- the dataset object the rest of the package uses --------------------------------------------


@dataclass
class ImageSet(torch.utils.data.Dataset):
    """A split of a dataset: images as RGB PIL (or transformed), labels, class names, templates."""

    spec: DatasetSpec
    split: str  # "train", "val", "test" or "all"
    source: object = field(repr=False)
    indices: Optional[list[int]] = field(default=None, repr=False)
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    transform: Optional[Callable] = field(default=None, repr=False)
    split_source: str = ""  # where this split's images come from, e.g. "EuroSAT_splits/val folder"
    class_folders: tuple[str, ...] = ()  # image folders: the class folder of each label (sorted)

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.source)

    def __getitem__(self, i: int):
        image, label = self.source[self.indices[i] if self.indices is not None else i]
        image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label

    def with_transform(self, transform: Optional[Callable]) -> "ImageSet":
        return replace(self, transform=transform)

    @property
    def class_mapping(self) -> Optional[dict[str, str]]:
        """Class folder -> the name the prompts use, in label order (image folders only)."""
        return dict(zip(self.class_folders, self.classnames)) if self.class_folders else None

    @property
    def label(self) -> str:
        """e.g. ``digits:val`` -- the dataset and the split actually used."""
        base = self.spec.text.rsplit(":", 1)[0] if self.spec.split else self.spec.text
        return base if self.split == "all" else f"{base}:{self.split}"


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


def load_dataset(
    spec: str | DatasetSpec,
    default_split: str,
    classnames_file: Optional[Path] = None,
    templates_file: Optional[Path] = None,
) -> ImageSet:
    """Open a dataset spec at its split (or ``default_split``); nothing is downloaded."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    found = _open_source(spec)
    _check_sources(spec, found)
    protect(spec)
    source, indices, split, origin = _select_split(spec, found, spec.split or default_split)
    classnames = found.classnames
    if classnames_file is not None:
        given = prompts.read_classnames(classnames_file)
        classnames = _checked_classnames(given, classnames, found.folders, classnames_file)
    templates = prompts.read_templates(templates_file) if templates_file else prompts.templates_for(spec.kind)
    loaded = ImageSet(spec, split, source, indices, tuple(classnames), tuple(templates), split_source=origin,
                      class_folders=tuple(found.folders))
    if classnames_file is not None and loaded.class_mapping:
        _log_mapping(loaded)
    return loaded


def _check_sources(spec: DatasetSpec, found: Sources) -> None:
    """The one check of what a dataset's own files say, made when it is opened, before any image
    is read: every label names one of its classes, every image file lies inside its root."""
    inside = Confinement(spec.root, spec.text) if spec.root is not None else None
    for source in (found.train, found.test, found.val):
        if source is None:
            continue
        paths, labels = source.listing()
        labels_file = getattr(source, "labels_file", None)
        checked_labels(labels, len(found.classnames), str(spec.root / labels_file) if labels_file else spec.text)
        for path in paths if inside is not None and paths is not None else ():
            inside.check(path)


def _select_split(spec: DatasetSpec, found: Sources, split: str):
    """(source, indices or None, the split actually used, where its images come from)."""
    if split == "test":
        if found.test is not None:
            return found.test, None, "test", found.test_from
        if spec.split is None and spec.kind == "folder":
            return found.train, None, "all", found.train_from  # a flat folder evaluates on all its images
        raise UsageError(f"{spec.text}: this dataset has no test split here; use :val (the paper's hold-out)")
    if found.val is not None:  # the release's own Val folder: fine-tuning uses all of train
        if split == "val":
            return found.val, None, "val", found.val_from
        return found.train, None, "train", f"all of {found.train_from}"
    train_idx, val_idx = val_split_indices(len(found.train))
    if split == "val":
        held_out = f"seeded {VAL_FRACTION:.0%} hold-out (seed {VAL_SEED}, at most {VAL_MAX:,} images)"
        return found.train, val_idx, "val", f"{held_out} of {found.train_from}"
    return found.train, train_idx, "train", f"{found.train_from} minus the Val hold-out"


def _checked_classnames(given: Sequence[str], found: Sequence[str], folders: Sequence[str], path: Path) -> Sequence[str]:
    """Names in label order: plain lines are taken in label order (for image folders, the sorted
    class folders); ``FOLDER<TAB>NAME`` lines name each class folder, in any order."""
    if any("\t" in line for line in given):
        return _names_by_folder(given, folders, path)
    if len(given) != len(found):
        raise UsageError(f"{path}: --classnames has {len(given)} names but the dataset has {len(found)} classes")
    return given


def _names_by_folder(lines: Sequence[str], folders: Sequence[str], path: Path) -> tuple[str, ...]:
    if not folders:
        raise UsageError(f"{path}: --classnames FOLDER<TAB>NAME lines need an image-folder dataset; "
                         "give one name per line in label order")
    named: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        folder, tab, name = line.partition("\t")
        folder, name = folder.strip(), name.strip()
        if not tab or not folder or not name:
            raise UsageError(f"{path}:{number}: --classnames line is not FOLDER<TAB>NAME: {line!r}")
        if folder in named:
            raise UsageError(f"{path}:{number}: --classnames names class folder {folder!r} twice")
        if folder not in folders:
            raise UsageError(f"{path}:{number}: --classnames names {folder!r}, which is not a class folder "
                             f"(folders: {', '.join(folders[:8])}{', ...' if len(folders) > 8 else ''})")
        named[folder] = name
    missing = [f for f in folders if f not in named]
    if missing:
        raise UsageError(f"{path}: --classnames does not name class folder(s) {', '.join(missing[:8])}"
                         f"{', ...' if len(missing) > 8 else ''}")
    return tuple(named[f] for f in folders)


def _log_mapping(loaded: ImageSet) -> None:
    """Say which name each class folder got: a list in the wrong order would go unnoticed."""
    from negmerge_cli.core.output import output

    pairs = ", ".join(f"{folder} -> {name}" for folder, name in loaded.class_mapping.items())
    output().log(f"{loaded.label}: class names (folder -> name): {pairs}")


def _open_source(spec: DatasetSpec) -> Sources:
    if spec.kind == "digits":
        return _open_digits()
    if spec.kind == "folder":
        return _open_folder_dataset(spec.root, names.folder_name)
    if not spec.root.is_dir():
        raise NegmergeError(f"{spec.root}: dataset root does not exist (from --data {spec.text})")
    return _PAPER_OPENERS[spec.kind](spec)


def _open_digits() -> Sources:
    splits = read_digits()
    train, test = _DigitsSource(*splits["train"]), _DigitsSource(*splits["test"])
    return Sources(train, test, names.DIGITS, "digits train (1,438)", "digits test (359)")


def _open_folder_dataset(root: Path, to_classname: Callable[[str], str], test_names: Sequence[str] = ("test", "val"),
                         val_name: Optional[str] = None) -> Sources:
    """ROOT/train (+ the first of ``test_names`` present as the test split, + ``val_name`` as a
    separate Val folder), or ROOT itself with class folders."""
    if not root.is_dir():
        raise NegmergeError(f"{root}: dataset folder does not exist")
    if not (root / "train").is_dir():
        train, classes = _scan_class_folders(root)
        return Sources(train, None, tuple(to_classname(c) for c in classes), f"{root.name} folder", folders=classes)
    train, classes = _scan_class_folders(root / "train")
    test_dir = next((root / s for s in test_names if (root / s).is_dir()), None)
    val_dir = root / val_name if val_name and (root / val_name).is_dir() else None
    scan = lambda folder: _scan_class_folders(folder, classes)[0] if folder else None
    describe = lambda folder: f"{root.name}/{folder.name} folder" if folder else None
    return Sources(train, scan(test_dir), tuple(to_classname(c) for c in classes), describe(root / "train"),
                   describe(test_dir), scan(val_dir), describe(val_dir), folders=classes)


def _scan_class_folders(root: Path, classes: Optional[Sequence[str]] = None):
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
    return _FileSource(samples), classes


# --- the paper's datasets from a local root -----------------------------------------------------


def _torchvision(spec: DatasetSpec, factory: Callable, layout: str, labels_file: Optional[str] = None):
    """A torchvision dataset over ROOT; ``labels_file`` (relative to ROOT) is where its labels are read from."""
    try:
        return _TorchvisionSource(factory(), spec.text, Path(labels_file) if labels_file else None)
    except (RuntimeError, FileNotFoundError) as exc:
        raise NegmergeError(f"{spec.root}: no {spec.kind} data in the expected layout {layout} ({exc})") from None
    except (KeyError, ValueError, IndexError, TypeError) as exc:  # torchvision parses the lists: bad entries fail in it
        where = spec.root / labels_file if labels_file else spec.root
        if isinstance(exc, KeyError):  # an image folder the class list lacks, a missing column...
            raise NegmergeError(f"{where}: has no {str(exc)[:80]}, which the {spec.kind} files need") from None
        reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise NegmergeError(f"{where}: cannot read the {spec.kind} lists ({reason})") from None
    except ImportError as exc:
        raise NegmergeError(f"{spec.text}: reading {spec.kind} needs {exc.name} (pip install {exc.name})") from None


def _open_mnist(spec) -> Sources:
    from torchvision.datasets import MNIST

    load = lambda train: _torchvision(spec, lambda: MNIST(str(spec.root), train=train), "ROOT/MNIST/raw/*-ubyte",
                                      f"MNIST/raw/{'train' if train else 't10k'}-labels-idx1-ubyte")
    return Sources(load(True), load(False), names.DIGITS, "MNIST train (torchvision)", "MNIST t10k (torchvision)")


def _open_svhn(spec) -> Sources:
    from torchvision.datasets import SVHN

    load = lambda split: _torchvision(spec, lambda: SVHN(str(spec.root), split=split), "ROOT/{train,test}_32x32.mat",
                                      f"{split}_32x32.mat")
    return Sources(load("train"), load("test"), names.DIGITS, "SVHN train_32x32.mat", "SVHN test_32x32.mat")


def _open_gtsrb(spec) -> Sources:
    from torchvision.datasets import GTSRB

    layout = "ROOT/gtsrb/GTSRB/Training, ROOT/gtsrb/GT-final_test.csv"
    labels = {"train": "gtsrb/GTSRB/Training", "test": "gtsrb/GT-final_test.csv"}
    load = lambda split: _torchvision(spec, lambda: GTSRB(str(spec.root), split=split), layout, labels[split])
    return Sources(load("train"), load("test"), names.GTSRB, "GTSRB train (torchvision)", "GTSRB test (torchvision)")


def _open_cars(spec) -> Sources:
    from torchvision.datasets import StanfordCars

    layout = "ROOT/stanford_cars/{devkit,cars_train,cars_test,cars_test_annos_withlabels.mat}"
    train = _torchvision(spec, lambda: StanfordCars(str(spec.root), split="train"), layout,
                         "stanford_cars/devkit/cars_train_annos.mat")
    test = _torchvision(spec, lambda: StanfordCars(str(spec.root), split="test"), layout,
                        "stanford_cars/cars_test_annos_withlabels.mat")
    return Sources(train, test, tuple(train.dataset.classes), "stanford_cars cars_train", "stanford_cars cars_test")


def _open_dtd(spec) -> Sources:
    """task_vectors' ROOT/dtd/{train,val} (the release tests on val), else the DTD release's lists."""
    if (spec.root / "dtd" / "train").is_dir():
        return _open_folder_dataset(spec.root / "dtd", names.folder_name, test_names=("val", "test"))
    return _open_dtd_lists(spec)


def _open_dtd_lists(spec) -> Sources:
    """The DTD release (torchvision's ROOT/dtd/dtd/{images,labels}, or ROOT/dtd/{images,labels}).

    task_vectors' ``dtd/train`` folder holds partition 1's train and val images and its ``dtd/val``
    the test images; both are read the way ImageFolder reads them (classes sorted, files sorted
    within a class), so the seeded Val hold-out draws the same images as from the folders."""
    base = next((b for b in (spec.root / "dtd" / "dtd", spec.root / "dtd") if (b / "labels").is_dir()), None)
    if base is None:
        raise NegmergeError(f"{spec.root}: no dtd data in the expected layout ROOT/dtd/{{train,val}}/<class>/ "
                            f"(task_vectors) or ROOT/dtd/dtd/{{images,labels}} (torchvision)")
    train = sorted(_dtd_list(base, "train1") + _dtd_list(base, "val1"))
    test = sorted(_dtd_list(base, "test1"))
    classes = sorted({cls for cls, _ in train})
    label = {c: i for i, c in enumerate(classes)}
    stray = next((c for c, _ in test if c not in label), None)
    if stray is not None:
        raise NegmergeError(f"{base / 'labels' / 'test1.txt'}: class {stray!r} has no training images")
    source = lambda listed: _FileSource([(str(base / "images" / c / f), label[c]) for c, f in listed])
    return Sources(source(train), source(test), tuple(names.folder_name(c) for c in classes),
                   "dtd labels/train1.txt + val1.txt", "dtd labels/test1.txt", folders=classes)


def _dtd_list(base: Path, name: str) -> list[tuple[str, str]]:
    """(class, file name) of each line ``class/file.jpg`` of labels/NAME.txt."""
    listing = base / "labels" / f"{name}.txt"
    if not listing.is_file():
        raise NegmergeError(f"{listing}: missing split list for dtd")
    pairs = []
    for number, line in enumerate(files.read_text(listing, limit=64 * 2**20, what="a split list").splitlines(), 1):
        if line.strip():
            parts = line.strip().split("/")
            if len(parts) != 2:
                raise NegmergeError(f"{listing}: line {number}: {line.strip()!r} is not CLASS/FILE")
            pairs.append(tuple(check_plain_name(part, f"{listing}: line {number}") for part in parts))
    return pairs


def _open_eurosat(spec) -> Sources:
    """task_vectors' EuroSAT_splits/{train,val,test}: Val is the val folder, as in the release."""
    if (spec.root / "EuroSAT_splits" / "train").is_dir():
        found = _open_folder_dataset(spec.root / "EuroSAT_splits", names.eurosat_name, ("test",), val_name="val")
        if found.val is None:
            _warn_once(f"{spec.root}/EuroSAT_splits has no val folder: Val is the seeded hold-out of train "
                       f"(the paper's EuroSAT Val is the 2,700-image val folder)")
        return found
    from torchvision.datasets import EuroSAT

    train = _torchvision(spec, lambda: EuroSAT(str(spec.root)), "ROOT/eurosat/2750/<class>/*.jpg")
    return Sources(train, None, tuple(names.eurosat_name(c) for c in train.dataset.classes), "eurosat/2750")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning shown once per process (train and Val open the same dataset)."""
    from negmerge_cli.core.output import output

    if message not in _warned:
        _warned.add(message)
        output().warn(message)


def _open_resisc45(spec) -> Sources:
    """task_vectors layout: ROOT/resisc45/NWPU-RESISC45/<class>/*.jpg + resisc45-{train,test}.txt."""
    base = spec.root / "resisc45"
    images = base / "NWPU-RESISC45"
    if not images.is_dir():
        raise NegmergeError(f"{spec.root}: no resisc45 data in the expected layout ROOT/resisc45/NWPU-RESISC45/<class>/")
    every, classes = _scan_class_folders(images)

    def split(name: str) -> _FileSource:
        listing = base / f"resisc45-{name}.txt"
        if not listing.is_file():
            raise NegmergeError(f"{listing}: missing split list for resisc45")
        text = files.read_text(listing, limit=64 * 2**20, what="a split list")
        keep = {line.strip() for line in text.splitlines() if line.strip()}
        return _FileSource([s for s in every.samples if Path(s[0]).name in keep])

    return Sources(split("train"), split("test"), tuple(names.folder_name(c) for c in classes),
                   "resisc45-train.txt", "resisc45-test.txt", folders=classes)


def _open_sun397(spec) -> Sources:
    """task_vectors' ROOT/sun397/{train,val} (class folders 'a_abbey'...); the release tests on val."""
    if (spec.root / "sun397" / "train").is_dir():
        return _open_folder_dataset(spec.root / "sun397", lambda c: names.folder_name(c[2:]), ("val", "test"))
    from torchvision.datasets import SUN397

    train = _torchvision(spec, lambda: SUN397(str(spec.root)), "ROOT/SUN397/ClassName.txt", "SUN397/ClassName.txt")
    return Sources(train, None, tuple(names.folder_name(c) for c in train.dataset.classes), "SUN397 (torchvision)")


def _open_imagenet(spec) -> Sources:
    """ROOT/train and ROOT/val with one WordNet-id folder per class (the usual ImageNet layout)."""
    found = _open_folder_dataset(spec.root, lambda c: c)
    if len(found.classnames) == 1000:
        found.classnames = names.imagenet()
    return found


_PAPER_OPENERS = {
    "mnist": _open_mnist,
    "svhn": _open_svhn,
    "gtsrb": _open_gtsrb,
    "cars": _open_cars,
    "dtd": _open_dtd,
    "eurosat": _open_eurosat,
    "resisc45": _open_resisc45,
    "sun397": _open_sun397,
    "imagenet": _open_imagenet,
}


def paper_epochs(kind: str, augmented: bool) -> Optional[int]:
    """The paper's epoch count for a dataset kind, None where the paper has none."""
    return (PAPER_EPOCHS_AUG if augmented else PAPER_EPOCHS_NOAUG).get(kind)
