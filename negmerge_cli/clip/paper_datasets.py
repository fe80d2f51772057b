"""The paper's datasets (and ImageNet) read from a local root, in torchvision's or task_vectors'
on-disk layout; nothing is downloaded. :func:`open_paper_dataset` gives each split's source, the
class names the prompts use, and where each split comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from negmerge_cli.clip import classnames as names
from negmerge_cli.clip.image_sources import (
    FileSource,
    Sources,
    TorchvisionSource,
    open_folder_dataset,
    scan_class_folders,
)
from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.training.data_checks import check_plain_name


def open_paper_dataset(spec) -> Sources:
    """The sources of paper dataset ``spec`` (a :class:`~negmerge_cli.clip.datasets.DatasetSpec`)."""
    if not spec.root.is_dir():
        raise NegmergeError(f"{spec.root}: dataset root does not exist (from --data {spec.text})")
    return _OPENERS[spec.kind](spec)


def _torchvision(spec, factory: Callable, layout: str, labels_file: Optional[str] = None):
    """A torchvision dataset over ROOT; ``labels_file`` (relative to ROOT) is where its labels are read from."""
    try:
        return TorchvisionSource(factory(), spec.text, Path(labels_file) if labels_file else None)
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
        return open_folder_dataset(spec.root / "dtd", names.folder_name, test_names=("val", "test"))
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
    source = lambda listed: FileSource([(str(base / "images" / c / f), label[c]) for c, f in listed])
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
        found = open_folder_dataset(spec.root / "EuroSAT_splits", names.eurosat_name, ("test",), val_name="val")
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
    every, classes = scan_class_folders(images)

    def split(name: str) -> FileSource:
        listing = base / f"resisc45-{name}.txt"
        if not listing.is_file():
            raise NegmergeError(f"{listing}: missing split list for resisc45")
        text = files.read_text(listing, limit=64 * 2**20, what="a split list")
        keep = {line.strip() for line in text.splitlines() if line.strip()}
        return FileSource([s for s in every.samples if Path(s[0]).name in keep])

    return Sources(split("train"), split("test"), tuple(names.folder_name(c) for c in classes),
                   "resisc45-train.txt", "resisc45-test.txt", folders=classes)


def _open_sun397(spec) -> Sources:
    """task_vectors' ROOT/sun397/{train,val} (class folders 'a_abbey'...); the release tests on val."""
    if (spec.root / "sun397" / "train").is_dir():
        return open_folder_dataset(spec.root / "sun397", lambda c: names.folder_name(c[2:]), ("val", "test"))
    from torchvision.datasets import SUN397

    train = _torchvision(spec, lambda: SUN397(str(spec.root)), "ROOT/SUN397/ClassName.txt", "SUN397/ClassName.txt")
    return Sources(train, None, tuple(names.folder_name(c) for c in train.dataset.classes), "SUN397 (torchvision)")


def _open_imagenet(spec) -> Sources:
    """ROOT/train and ROOT/val with one WordNet-id folder per class (the usual ImageNet layout)."""
    found = open_folder_dataset(spec.root, lambda c: c)
    if len(found.classnames) == 1000:
        found.classnames = names.imagenet()
    return found


_OPENERS = {
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

PAPER_DATASETS = tuple(_OPENERS)  # the kinds NAME:ROOT may name
