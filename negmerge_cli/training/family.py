"""The interface every model family implements (``clip/family.py``, ``classifier/family.py``), in
the spirit of open_clip's factory: the stages above stay family-neutral and find a model's family
through one registry (:mod:`negmerge_cli.stages.registry`).

A family owns its defaults, refuses the options it cannot honour (never ignores them), plans and
trains grid points (the record loop around them is :func:`negmerge_cli.training.sweep_runner.run_sweep`),
evaluates a checkpoint and searches lambda.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional, Protocol, Sequence

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.results import Metrics
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.options import EvalOptions, FinetuneOptions, SearchOptions
from negmerge_cli.training.sweep import GridPoint, SweepFolder

FAMILY_WORDS = {"clip": "CLIP models", "classifier": "classifier models"}


@dataclass(frozen=True)
class FinetuneDefaults:
    """What a family trains with when the caller does not say."""

    lr: float
    wd: float
    warmup_steps: int
    optimizer: str


@dataclass(frozen=True)
class TrainedPoint:
    """One grid point trained and its checkpoint written (on rank 0; None on the other ranks)."""

    file: Path
    metrics: Metrics
    stats: dict
    metric_label: str  # how the log names ``metrics``: "Val acc1", "test acc1"


class PointTrainer(Protocol):
    """One ``finetune`` call's state shared by its grid points."""

    folder: SweepFolder
    ranks: Ranks

    def prepare(self, points: list[GridPoint]) -> list[GridPoint]:
        """Write the base (rank 0, under the folder's lock), load it, measure it; the points to train."""

    def train(self, point: GridPoint) -> Optional[TrainedPoint]:
        """Train ``point`` from the base and write its checkpoint; raises on failure."""


class Family(Protocol):
    name: str  # "clip" | "classifier": the tag of its options in negmerge_cli.training.options
    finetune_defaults: FinetuneDefaults
    distributed: bool  # trains data-parallel under torchrun

    def owns(self, model: str) -> bool: ...

    def plan(self, options: FinetuneOptions) -> list[GridPoint]:
        """Every check that needs no data or model, then the grid points to run (``options`` as
        :func:`resolve` leaves them, as for :meth:`trainer`)."""

    def trainer(self, options: FinetuneOptions, ranks: Ranks) -> PointTrainer: ...

    def evaluate(self, data: Sequence[str], options: EvalOptions, json_out: Optional[Path], force: bool):
        """The family's result(s) for the checkpoint, also written to ``json_out``."""

    def search(self, options: EvalOptions, search: SearchOptions, json_out: Optional[Path], force: bool):
        """Every lambda's result and the one chosen, also written to ``json_out``."""


def resolve(family: Family, options: FinetuneOptions) -> FinetuneOptions:
    """``options`` as ``family`` runs them: the other family's options refused, its defaults filled in."""
    refuse_foreign_options(options, family.name, options.model)
    return with_defaults(options, family.finetune_defaults)


def with_defaults(options: FinetuneOptions, defaults: FinetuneDefaults) -> FinetuneOptions:
    """``options`` with the family's defaults where the caller left None."""
    grid = replace(options.grid, lr=_or(options.grid.lr, (defaults.lr,)), wd=_or(options.grid.wd, (defaults.wd,)))
    return replace(options, grid=grid, warmup_steps=_or(options.warmup_steps, defaults.warmup_steps),
                   optimizer=_or(options.optimizer, defaults.optimizer))


def _or(value, default):
    return default if value is None else value


def refuse_foreign_options(options, family: str, model: str, given: Sequence[str] = ()) -> None:
    """UsageError for the first option of another family set to anything but its default: the
    family cannot honour it. ``given``: field names that count as set whatever their value."""
    for spec in fields(options):
        owner = spec.metadata.get("family")
        if owner is None or owner == family:
            continue
        if spec.name in given or _differs(getattr(options, spec.name), _default_of(spec)):
            hint = spec.metadata.get("hint")
            raise UsageError(f"{option(spec.name)} is for {FAMILY_WORDS[owner]}; {option('model')} {model} is one "
                             f"of the {FAMILY_WORDS[family]}" + (f" ({hint})" if hint else ""))


def _differs(value, default) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return tuple(value) != tuple(default)  # [] and () alike: Python callers pass either
    return value != default


def _default_of(spec):
    return spec.default_factory() if callable(spec.default_factory) else spec.default


__all__ = ["Family", "FinetuneDefaults", "PointTrainer", "TrainedPoint", "refuse_foreign_options", "resolve",
           "with_defaults"]
