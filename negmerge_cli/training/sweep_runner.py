"""The one record loop of every sweep, whatever the family: claim the folder, let the family's
trainer write and load the base, then for each point still to train a ``running`` record, the
training, and a ``done`` (or ``failed``) record; the manifest rebuilt at the end. Under torchrun,
rank 0 does all file work and the other ranks stay quiet."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Optional

from negmerge_cli.core import files
from negmerge_cli.core.output import output
from negmerge_cli.results import PointRecord, SweepManifest
from negmerge_cli.training import distributed
from negmerge_cli.training.family import Family, PointTrainer
from negmerge_cli.training.options import FinetuneOptions
from negmerge_cli.training.sweep import GridPoint


def run_sweep(family: Family, options: FinetuneOptions, points: list[GridPoint]) -> Optional[SweepManifest]:
    """Train ``points`` into ``options.output``; the manifest (None off rank 0)."""
    ranks = distributed.join() if family.distributed else distributed.Ranks()
    try:
        with files.operation(), (contextlib.nullcontext() if ranks.is_main else output().silenced()):
            return _run(family.trainer(options, ranks), points)
    finally:
        distributed.leave(ranks)


def _run(trainer: PointTrainer, points: list[GridPoint]) -> Optional[SweepManifest]:
    main = trainer.ranks.is_main
    with trainer.folder.claim() if main else contextlib.nullcontext():
        for point in trainer.prepare(points):
            _train_and_record(trainer, point, main)
    return trainer.folder.rebuild_manifest() if main else None


def _train_and_record(trainer: PointTrainer, point: GridPoint, main: bool) -> None:
    folder = trainer.folder
    if main:
        folder.write_record(PointRecord(point.index, point.name, "running", point.hyperparameters(),
                                        host=socket.gethostname(), pid=os.getpid()))
    try:
        trained = trainer.train(point)
    except Exception as exc:
        if main:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            folder.write_record(PointRecord(point.index, point.name, "failed", point.hyperparameters(),
                                            error=first_line))
        raise
    if main:
        folder.write_record(PointRecord(point.index, point.name, "done", point.hyperparameters(),
                                        file=trained.file.name, val=trained.metrics, train=trained.stats))
        rate = trained.stats.get("images_per_s", 0)
        output().log(f"{point.name}: {trained.metric_label} {100 * trained.metrics.acc1:.2f}%  ({rate:.0f} img/s)")
