"""Forget/retain splits of a classifier's training set (Df and Dr), saved as JSON.

Random forgetting: a ``fraction`` of the training set drawn without replacement by numpy's PCG64
generator seeded with ``seed`` (count = round(fraction x n_train)). Class forgetting: every train
example whose label is in ``classes``. The file records the dataset identity (name, sizes, class
count, SHA-256 of the train labels), so a split is refused for another dataset. Same arguments ->
byte-identical file (sorted indices, sorted keys, no timestamps).

``protocol="salun"`` reproduces the split of SalUn's code (OPTML-Group/Unlearn-Saliency,
``Classification/dataset.py``; docs/split.md cites each line): a validation hold-out of each class
(``RandomState(seed)``), Df drawn from the rest (``RandomState(seed - 1)``), all indices in the
numbering of the full training set. The hold-out (``val_indices``) and the examples the protocol's
loader never reads (``unused_indices``) are in neither Dr nor Df: no training subset holds them.
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

PROTOCOLS = ("negmerge", "salun")  # split --protocol: the tool's own draw, or SalUn's
DEFAULT_SEED = {"negmerge": 0, "salun": 2}  # SalUn's arg_parser.py: --seed 2
# SalUn's per-class validation share, by dataset (dataset.py: 0.1 for CIFAR, 0.0 for Tiny-ImageNet)
_SALUN_VAL_SHARE = {"cifar10": 0.1, "cifar100": 0.1, "tinyimagenet": 0.0}


@dataclass(frozen=True)
class ForgetSplit:
    identity: dict
    seed: int | None
    fraction: float | None
    classes: tuple[int, ...] | None
    forget_indices: tuple[int, ...]
    protocol: str = "negmerge"
    val_indices: tuple[int, ...] = ()  # the validation hold-out: never trained on (eval: Dval)
    unused_indices: tuple[int, ...] = ()  # read by nothing in the protocol (Tiny-ImageNet's last image)

    @property
    def n_train(self) -> int:
        return int(self.identity["n_train"])

    @property
    def held_out(self) -> tuple[int, ...]:
        """Training examples that no training subset holds (the hold-out and the unused), sorted."""
        return tuple(sorted(self.val_indices + self.unused_indices))

    @property
    def training_indices(self) -> tuple[int, ...]:
        """Dr and Df together: what ``finetune --subset all`` trains on with this split."""
        return self._without(self.held_out)

    @property
    def retain_indices(self) -> tuple[int, ...]:
        return self._without(self.forget_indices + self.held_out)

    def _without(self, indices) -> tuple[int, ...]:
        dropped = np.zeros(self.n_train, dtype=bool)
        dropped[list(indices)] = True
        return tuple(int(i) for i in np.flatnonzero(~dropped))

    @property
    def counts(self) -> dict:
        counts = {"forget": len(self.forget_indices), "train": self.n_train,
                  "retain": self.n_train - len(self.forget_indices) - len(self.held_out)}
        if self.protocol != "negmerge":
            counts.update(val=len(self.val_indices), unused=len(self.unused_indices))
        return counts

    def to_json(self) -> dict:
        body = {"format": FORMAT, "dataset": self.identity, "seed": self.seed, "fraction": self.fraction,
                "classes": list(self.classes) if self.classes is not None else None, "counts": self.counts,
                "forget_indices": list(self.forget_indices)}
        if self.protocol != "negmerge":  # the default protocol's file stays as it always was
            body.update(protocol=self.protocol, val_indices=list(self.val_indices),
                        unused_indices=list(self.unused_indices))
        return body

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


def make_forget_split(data, fraction: float | None = None, classes=None, seed: int | None = None,
                      protocol: str = "negmerge") -> ForgetSplit:
    """``seed`` None: the protocol's default (DEFAULT_SEED)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"{errors.option('protocol')} {protocol!r}: unknown protocol (one of {', '.join(PROTOCOLS)})")
    seed = DEFAULT_SEED[protocol] if seed is None else seed
    limits.check_values("split", {"forget_fraction": fraction, "forget_classes": classes, "seed": seed})
    if (fraction is None) == (classes is None):
        raise UsageError(f"give one of {errors.option('forget_fraction')} or {errors.option('forget_classes')}")
    if protocol == "salun":
        return _salun_split(data, fraction, classes, seed)
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


def _salun_split(data, fraction: float | None, classes, seed: int) -> ForgetSplit:
    """SalUn's random forgetting (docs/split.md cites the lines): in the protocol's numbering of the
    training set, hold out ``int(share x n_c)`` examples of each class c in label order with one
    ``RandomState(seed)``; the rest, ascending, is the protocol's training set, from which
    ``RandomState(seed - 1).choice(..., count, replace=False)`` draws Df."""
    if data.name not in _SALUN_VAL_SHARE:
        raise UsageError(f"{errors.option('protocol')} salun: SalUn's code defines cifar10, cifar100 and tinyimagenet "
                         f"only, not {data.name} ({errors.option('data')})")
    if classes is not None:
        raise UsageError(f"{errors.option('protocol')} salun: random forgetting only ({errors.option('forget_fraction')}); "
                         f"SalUn's class forgetting also removes the class from the test set")
    if seed < 1:
        raise UsageError(f"{errors.option('seed')} {seed}: the salun protocol draws Df with RandomState(seed - 1), "
                         "so the seed must be at least 1")
    labels = np.asarray(data.train_labels)
    order = np.arange(len(labels)) if data.imagefolder_order is None else np.asarray(data.imagefolder_order)
    unused = order[-1:] if data.name == "tinyimagenet" else order[:0]  # TinyImageNetDataset reads imgs[0:-1]
    read = order[:len(order) - len(unused)]  # protocol position p -> our index
    share = _SALUN_VAL_SHARE[data.name]
    held = np.zeros(len(read), dtype=bool)
    if share:  # Tiny-ImageNet's int(0.0 x n) holds out nothing (its validation loader is the test set)
        rng = np.random.RandomState(seed)
        in_order = labels[read]
        for label in range(int(in_order.max()) + 1):
            members = np.flatnonzero(in_order == label)
            held[rng.choice(members, int(share * len(members)), replace=False)] = True
    remaining = np.flatnonzero(~held)  # the protocol's train_idx, ascending
    count = int(round(fraction * len(remaining)))
    if count == 0:
        raise UsageError(f"{errors.option('forget_fraction')} {fraction}: selects no example of the {len(remaining)} "
                         "left after the hold-out (empty Df)")
    if count >= len(remaining):
        raise UsageError(f"{errors.option('forget_fraction')} {fraction}: selects all {len(remaining)} examples "
                         "left after the hold-out (empty Dr)")
    drawn = np.random.RandomState(seed - 1).choice(np.arange(len(remaining)), size=count, replace=False)
    as_ours = lambda positions: tuple(sorted(int(i) for i in read[positions]))  # noqa: E731
    return ForgetSplit(dict(data.identity), seed, float(fraction), None, as_ours(remaining[drawn]), "salun",
                       as_ours(np.flatnonzero(held)), tuple(int(i) for i in unused))


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
                        forget_indices=tuple(found.forget_indices), protocol=found.protocol,
                        val_indices=tuple(found.val_indices or ()), unused_indices=tuple(found.unused_indices or ()))
    _check_same_dataset(split, data, path)
    return split


def _check_same_dataset(split: ForgetSplit, data, path) -> None:
    for key in _MATCHED:
        if split.identity.get(key) != data.identity.get(key):
            raise UsageError(
                f"{errors.option('forget_split')} {path}: made for another dataset ({key} "
                f"{split.identity.get(key)!r} there, {data.identity.get(key)!r} in this --data)")
