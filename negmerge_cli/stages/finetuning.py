"""``finetune``: a hyperparameter sweep of fine-tunes written into one folder, for any model family.

Family-neutral: the family (:mod:`negmerge_cli.stages.registry`) fills in its defaults, refuses what
it cannot honour, plans the grid and trains each point; the record loop, the folder's lock and
resuming are the shared :func:`negmerge_cli.training.sweep_runner.run_sweep`.
"""

from __future__ import annotations

from typing import Optional

from negmerge_cli.results import SweepManifest
from negmerge_cli.stages.evaluation import local_paths
from negmerge_cli.stages.registry import family_for
from negmerge_cli.training.family import resolve
from negmerge_cli.training.options import FinetuneOptions
from negmerge_cli.training.sweep import Grid, GridPoint
from negmerge_cli.training.sweep_runner import run_sweep


def plan(options: FinetuneOptions) -> list[GridPoint]:
    """The grid points this call would run (after the ``point`` selection); validates the options."""
    family = family_for(options.model)
    return family.plan(resolve(family, local_paths(options)))


def finetune(options: FinetuneOptions) -> Optional[SweepManifest]:
    """Run (or resume) the sweep into ``options.output``; returns the manifest (None off rank 0)."""
    family = family_for(options.model)
    # a Hub id as pretrained becomes its snapshot; the family's defaults and refusals, once for plan and training
    options = resolve(family, local_paths(options))
    return run_sweep(family, options, family.plan(options))


__all__ = ["FinetuneOptions", "Grid", "finetune", "plan"]
