"""Whether BatchNorm running statistics belong in a task vector (``--buffers exclude|include``).

``running_mean`` and ``running_var`` are floating-point tensors of a state dict, so a plain
difference of checkpoints would put them in the vector; ``num_batches_tracked`` is an integer and
never is. Measured on the classifier demo (docs/vector.md, "BatchNorm running statistics"):
negating the running statistics with the weights sets each variance to var0 - lambda x (var_ft -
var0), negative once lambda > var0 / (var_ft - var0) (NaN outputs from lambda 0.8 there), and is
worse at every lambda before that. So vectors made from checkpoints leave them out by default
(``exclude``): ``apply`` and the lambda search then keep the original's statistics. ``include``
keeps the plain difference. The rule is by name: the last component is ``running_mean`` or
``running_var``.
"""

from __future__ import annotations

import json
from typing import Optional

from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.core.errors import UsageError, option

CHOICES = ("exclude", "include")
DEFAULT = "exclude"
RUNNING_STATISTICS = ("running_mean", "running_var")
METADATA_KEY = PREFIX + "running_statistics"


def check_choice(choice: Optional[str]) -> str:
    choice = DEFAULT if choice is None else choice
    if choice not in CHOICES:
        raise UsageError(f"{option('buffers')} {choice!r}: choose exclude (the default) or include")
    return choice


def is_running_statistic(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in RUNNING_STATISTICS


def apply_choice(jobs: list, choice: Optional[str]) -> tuple[list, dict[str, str]]:
    """The jobs (anything with ``.name``) to keep, and metadata recording the choice when the
    inputs have running statistics at all."""
    choice = check_choice(choice)
    statistics = [job for job in jobs if is_running_statistic(job.name)]
    if not statistics:
        return jobs, {}
    metadata = {METADATA_KEY: json.dumps({"buffers": choice, "tensors": len(statistics)})}
    if choice == "include":
        return jobs, metadata
    return [job for job in jobs if not is_running_statistic(job.name)], metadata
