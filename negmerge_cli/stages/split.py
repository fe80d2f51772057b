"""negmerge split: the forget set Df (and so the retain set Dr) of a classifier's training data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import files
from negmerge_cli.core.output import output


def make_split(data: str, output_path: str | os.PathLike, fraction: Optional[float] = None,
               classes: Optional[Sequence[int]] = None, seed: int = 0, force: bool = False):
    """Draw the split of ``--data`` and save it to ``output_path``; the ForgetSplit. Same arguments give
    a byte-identical file."""
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split

    with files.operation():
        files.check_target(Path(output_path), force=force)
        dataset = open_classifier_data(data)
        split = make_forget_split(dataset, fraction=fraction, classes=classes, seed=seed)
        split.save(output_path, force=force)
    counts = split.counts
    output().log(f"{output_path}: forget {counts['forget']:,} / retain {counts['retain']:,} of {counts['train']:,} "
                 f"{dataset.name} training examples")
    return split
