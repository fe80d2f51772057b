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

Where the images come from (digits, image folders, the image readers) is
:mod:`negmerge_cli.clip.image_sources`; the paper's datasets' layouts are
:mod:`negmerge_cli.clip.paper_datasets`.
"""

from __future__ import annotations

import difflib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from negmerge_cli.clip import classnames as names
from negmerge_cli.clip import templates as prompts
from negmerge_cli.clip.image_sources import (
    IMAGE_EXTENSIONS,
    FileSource,
    Sources,
    check_image_header,
    open_digits,
    open_folder_dataset,
)
from negmerge_cli.clip.paper_datasets import PAPER_DATASETS, open_paper_dataset
from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError
from negmerge_cli.training.data_checks import Confinement, checked_labels

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
VAL_MAX = 5000
VAL_SEED = 0
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
    if sep and _looks_like_kind(kind) and not Path(body).expanduser().exists():
        close = difflib.get_close_matches(kind.lower(), [*PAPER_DATASETS, "digits"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"dataset spec {text!r}: unknown dataset kind {kind!r}{hint}; known kinds: "
                         f"{', '.join(f'{name}:ROOT' for name in sorted(PAPER_DATASETS))}, digits, or an image folder PATH")
    return DatasetSpec("folder", Path(body).expanduser(), split, text)


def _looks_like_kind(text: str) -> bool:
    """``NAME`` of ``NAME:ROOT``: a word of two or more letters or digits (a one-letter drive ``C:``
    or a path is a folder)."""
    return len(text) > 1 and text.replace("_", "").replace("-", "").isalnum() and text.isascii()


def val_split_indices(n: int, seed: int = VAL_SEED) -> tuple[list[int], list[int]]:
    """(train, val) indices of the paper's Val rule over a training set of n images."""
    val_size = min(int(n * VAL_FRACTION), VAL_MAX)
    if val_size <= 0 or val_size >= n:
        raise UsageError(f"a training set of {n} images is too small for a 10% Val split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[: n - val_size], order[n - val_size :]


def check_images(data: "ImageSet", threads: int = 8) -> None:
    """Open every image file of ``data`` and read its header (not its pixels): a file that is not
    an image, or not a regular file, fails here in one line, before a command writes anything.
    Sources in torchvision's layouts are left out: torchvision opens their files itself."""
    if not isinstance(data.source, FileSource):
        return
    order = data.indices if data.indices is not None else range(len(data.source))
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(check_image_header, (data.source.samples[i][0] for i in order)):
            pass  # map raises the first failure in order


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
        return open_digits()
    if spec.kind == "folder":
        return open_folder_dataset(spec.root, names.folder_name)
    return open_paper_dataset(spec)


def paper_epochs(kind: str, augmented: bool) -> Optional[int]:
    """The paper's epoch count for a dataset kind, None where the paper has none."""
    return (PAPER_EPOCHS_AUG if augmented else PAPER_EPOCHS_NOAUG).get(kind)
