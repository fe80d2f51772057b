"""negmerge split: the forget set Df (and so the retain set Dr) of a classifier's training data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.output import output


def make_split(data: str, output_path: str | os.PathLike, fraction: Optional[float] = None,
               classes: Optional[Sequence[int]] = None, seed: Optional[int] = None, force: bool = False,
               protocol: str = "negmerge"):
    """Draw the split of ``--data`` and save it to ``output_path``; the ForgetSplit. Same arguments give
    a byte-identical file. ``protocol``: ``negmerge`` (the tool's draw) or ``salun`` (SalUn's code: a
    validation hold-out, then Df from the rest); ``seed`` None: the protocol's default (0; SalUn's 2)."""
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split

    if fraction is not None and classes is not None:  # before any file is read: a slip, not a data problem
        raise UsageError(f"{option('forget_fraction')} (random forgetting) and {option('forget_classes')} (class "
                         "forgetting) choose the forget set in two different ways; give one of them, not both")
    if fraction is None and classes is None:
        raise UsageError(f"no forget set chosen: give {option('forget_fraction')} (random forgetting, e.g. 0.1) or "
                         f"{option('forget_classes')} (class forgetting, e.g. 3,5)")
    with files.operation():
        files.check_target(Path(output_path), force=force)
        dataset = open_classifier_data(data)
        split = make_forget_split(dataset, fraction=fraction, classes=classes, seed=seed, protocol=protocol)
        split.save(output_path, force=force)
    counts = split.counts
    held = f" / hold-out {counts['val']:,}" if "val" in counts else ""
    unused = f" / unused {counts['unused']:,}" if counts.get("unused") else ""
    output().log(f"{output_path}: forget {counts['forget']:,} / retain {counts['retain']:,}{held}{unused} of "
                 f"{counts['train']:,} {dataset.name} training examples")
    return split
