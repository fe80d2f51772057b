"""Forget/retain splits of a classifier's training set (Df and Dr), saved as JSON.

Random forgetting: a ``fraction`` of the training set drawn without replacement by numpy's PCG64
generator seeded with ``seed`` (count = round(fraction x n_train)). Class forgetting: every train
example whose label is in ``classes``. The file records the dataset identity (name, sizes, class
count, SHA-256 of the train labels), so a split is refused for another dataset. Same arguments ->
byte-identical file (sorted indices, sorted keys, no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from negmerge_cli.core import errors, files, limits
from negmerge_cli.core.errors import NegmergeError, UsageError
from negmerge_cli.results.split_file import FORMAT

# identity entries that must match between a split and the data it is used with (the root may move)
_MATCHED = ("dataset", "n_train", "n_test", "num_classes", "train_labels_sha256")


@dataclass(frozen=True)
class ForgetSplit:
    identity: dict
    seed: int | None
    fraction: float | None
    classes: tuple[int, ...] | None
    forget_indices: tuple[int, ...]

    @property
    def n_train(self) -> int:
        return int(self.identity["n_train"])

    @property
    def retain_indices(self) -> tuple[int, ...]:
        forget = np.zeros(self.n_train, dtype=bool)
        forget[list(self.forget_indices)] = True
        return tuple(int(i) for i in np.flatnonzero(~forget))

    @property
    def counts(self) -> dict:
        return {"forget": len(self.forget_indices), "retain": self.n_train - len(self.forget_indices),
                "train": self.n_train}

    def to_json(self) -> dict:
        return {"format": FORMAT, "dataset": self.identity, "seed": self.seed, "fraction": self.fraction,
                "classes": list(self.classes) if self.classes is not None else None, "counts": self.counts,
                "forget_indices": list(self.forget_indices)}

    def text(self) -> str:
        # one index list on one line keeps 5,000 indices readable and the file small
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return body + "\n"

    @property
    def digest(self) -> str:
        """SHA-256 of the saved bytes: what a sweep's identity records."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    def save(self, path: str | os.PathLike, force: bool = False):
        return files.write_text(path, self.text(), force=force)


def make_forget_split(data, fraction: float | None = None, classes=None, seed: int = 0) -> ForgetSplit:
    limits.check_values("split", {"forget_fraction": fraction, "forget_classes": classes, "seed": seed})
    if (fraction is None) == (classes is None):
        raise UsageError(f"give one of {errors.option('forget_fraction')} or {errors.option('forget_classes')}")
    labels = np.asarray(data.train_labels)
    if fraction is not None:
        forget = _random_forget(len(labels), fraction, seed)
        return ForgetSplit(dict(data.identity), seed, float(fraction), None, forget)
    chosen = _check_classes(classes, data.num_classes)
    forget = tuple(int(i) for i in np.flatnonzero(np.isin(labels, chosen)))
    if not forget:
        raise UsageError(f"{errors.option('forget_classes')} {','.join(map(str, chosen))}: no training example has these labels")
    return ForgetSplit(dict(data.identity), None, None, chosen, forget)


def _random_forget(n_train: int, fraction: float, seed: int) -> tuple[int, ...]:
    count = int(round(fraction * n_train))
    if count == 0:
        raise UsageError(f"{errors.option('forget_fraction')} {fraction}: selects no example of {n_train} (empty Df)")
    if count == n_train:
        raise UsageError(f"{errors.option('forget_fraction')} {fraction}: selects all {n_train} examples (empty Dr)")
    chosen = np.random.Generator(np.random.PCG64(seed)).choice(n_train, size=count, replace=False)
    return tuple(int(i) for i in np.sort(chosen))


def _check_classes(classes, num_classes: int) -> tuple[int, ...]:
    chosen = tuple(sorted({int(c) for c in classes}))
    if not chosen:
        raise UsageError(f"{errors.option('forget_classes')}: give at least one class")
    unknown = [c for c in chosen if not 0 <= c < num_classes]
    if unknown:
        raise UsageError(f"{errors.option('forget_classes')}: class {unknown[0]} does not exist (labels 0..{num_classes - 1})")
    if len(chosen) == num_classes:
        raise UsageError(f"{errors.option('forget_classes')}: all {num_classes} classes (nothing left to retain)")
    return chosen


def load_forget_split(path: str | os.PathLike, data) -> ForgetSplit:
    """The split in ``path``, checked against ``data``; one line for anything wrong (the schema
    checks every field, the indices included: sorted, distinct, within the training set)."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.results.split_file import ForgetSplitFile

    found = schemas.read(path, ForgetSplitFile, error=NegmergeError, what="a forget split")
    split = ForgetSplit(identity=found.dataset.model_dump(), seed=found.seed, fraction=found.fraction,
                        classes=tuple(found.classes) if found.classes is not None else None,
                        forget_indices=tuple(found.forget_indices))
    _check_same_dataset(split, data, path)
    return split


def _check_same_dataset(split: ForgetSplit, data, path) -> None:
    for key in _MATCHED:
        if split.identity.get(key) != data.identity.get(key):
            raise UsageError(
                f"{errors.option('forget_split')} {path}: made for another dataset ({key} "
                f"{split.identity.get(key)!r} there, {data.identity.get(key)!r} in this --data)")
