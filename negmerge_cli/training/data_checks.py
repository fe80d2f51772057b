"""What every dataset reader checks when it opens a dataset, before any image is read.

A dataset's own files (class lists, annotations, split lists, label arrays) are input like any
other: a label must be an integer naming one of its classes, and a file it names must lie inside
its root. Both dataset families (classifier/data.py; clip/datasets.py and clip/paper_datasets.py)
check through here:

- :func:`checked_labels`: integers (not floats, strings or booleans) in 0..C-1, or one line naming
  the file, the field and the first bad entry;
- :func:`check_plain_name`: a name that a list gives for one path component (a class folder, an
  image file) is exactly that: not empty, not ``.``/``..``, no ``/``;
- :class:`Confinement`: every file path built from the dataset's own lists lies inside ROOT (no
  ``..`` climbing out, no absolute path). Symlinks are followed: links are the user's own
  arrangement of their disk (ImageNet subsets are often link farms), while a list inside a
  downloaded dataset is not the user's word.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from negmerge_cli.core.errors import NegmergeError


def checked_labels(labels, num_classes: int, source: str, field: str = "labels") -> np.ndarray:
    """``labels`` as int64 when each is an integer class index (0..num_classes-1); otherwise a
    NegmergeError naming ``source`` (the file), ``field`` and the first bad entry."""
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise NegmergeError(f"{source}: {field} must be a flat list of integer labels") from None
    if array.ndim != 1:
        raise NegmergeError(f"{source}: {field} must be a flat list of integer labels (got {array.ndim} dimensions)")
    if array.dtype.kind not in "iu":
        index, value = _first_non_integer(labels, array)
        if index is not None:
            raise NegmergeError(f"{source}: {field}: entry {index} is {_shown(value)}, not an integer label")
        array = np.asarray(array.tolist(), dtype=object)  # integers beyond 64 bits: out of range below
    outside = np.flatnonzero((array < 0) | (array >= num_classes))
    if outside.size:
        index = int(outside[0])
        raise NegmergeError(f"{source}: {field}: entry {index} is {_shown(int(array[index]))}, not a class "
                            f"(this dataset has {num_classes} classes: 0..{num_classes - 1})")
    return array.astype(np.int64)


def _first_non_integer(labels, array: np.ndarray):
    """The first entry that is no integer, as the file has it (numpy turns [1, "2"] into strings);
    (None, None) when all are integers."""
    values = labels if isinstance(labels, (list, tuple)) else array.tolist()
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            return index, value
    return None, None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_plain_name(name: str, source: str) -> str:
    """``name`` (a class folder or image file named in ``source``, e.g. ``wnids.txt: line 3``) if it
    is one plain path component; a name that could lead elsewhere is refused."""
    if name in ("", ".", "..") or "/" in name or "\0" in name or (os.altsep and os.altsep in name):
        raise NegmergeError(f"{source}: {name!r} is not a plain file or folder name "
                            "(a dataset names only files inside its root)")
    return name


class Confinement:
    """The files of a dataset rooted at ``root`` (as the user gave it): each checked path must lie
    inside it as written, which a list entry such as ``../../etc/x`` or ``/etc/x`` does not."""

    def __init__(self, root: str | os.PathLike, dataset: str):
        given = str(Path(root))  # the form paths built from it start with ("." drops out of them)
        self.prefix = "" if given == "." else given.rstrip(os.sep) + os.sep
        self.dataset = dataset

    def check(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        rest = path[len(self.prefix):]
        if not path.startswith(self.prefix) or os.path.isabs(rest) or ".." in rest.split(os.sep):
            raise NegmergeError(f"{path}: outside the root of {self.dataset}; a dataset names only files inside "
                                "its root")
