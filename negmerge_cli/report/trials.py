"""Repeated runs of one experiment as one row: the classifier reproduction's ``TRIALS=N`` writes
each trial's results under ``OUT/trial-K/``, and a report over them shows, per method, the mean of
every figure with its sample standard deviation (n - 1 in the denominator) and n, the trials it
has. A result file's trial is the last ``trial-K`` folder on its path; files in no such folder are
no trial, and the same method twice among them stays an error."""

from __future__ import annotations

import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

from negmerge_cli.core.errors import UsageError
from negmerge_cli.report.rows import ResultRow

TRIAL_FOLDER = re.compile(r"trial-(\d+)")
# the figures a trial row averages: the row's attribute -> its name in CSV and JSON
FIELDS = {"forget": "forget_acc1", "retain": "retain_acc1", "coef": "lambda", "nonzero": "nonzero_fraction",
          "kept": "kept_fraction"}


def trial_of(source: str) -> Optional[str]:
    """``runs/x/trial-2/negmerge/eval.json`` -> ``2``; None outside a ``trial-K`` folder."""
    found = [part for part in Path(source).resolve().parts if TRIAL_FOLDER.fullmatch(part)]
    return TRIAL_FOLDER.fullmatch(found[-1]).group(1) if found else None


def tagged(row: ResultRow) -> ResultRow:
    trial = trial_of(row.sources[0]) if row.sources else None
    return replace(row, trial=trial) if trial is not None else row


def check_mixed(rows: Iterable[ResultRow]) -> None:
    """A method's results all in trial folders or none: a lone run beside trials is not one of them."""
    trials: dict[tuple, set] = {}
    for row in rows:
        trials.setdefault(row.key, set()).add(row.trial is None)
        if len(trials[row.key]) > 1:
            raise UsageError(f"{row.method} on {row.dataset}: results both inside and outside trial-K folders "
                             f"({row.sources[0]}); report the trials apart from the other run")


def combine(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """One row per (setting, method, dataset): a key's rows from several trials become their mean
    (``n`` = the number of trials, ``spread`` = each figure's sample standard deviation)."""
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(row.key, []).append(row)
    return [_mean_row(group) if group[0].trial is not None else group[0] for group in groups.values()]


def _mean_row(group: list[ResultRow]) -> ResultRow:
    means, spread = {}, {}
    for attribute, name in FIELDS.items():
        means[attribute], spread[name] = _summary([getattr(r, attribute) for r in group])
    metrics = {}
    for key in dict.fromkeys(k for r in group for k in r.metrics):
        metrics[key], spread[key] = _summary([r.metrics.get(key) for r in group])
    vectors = ", ".join(dict.fromkeys(r.vector for r in group if r.vector)) or None
    return replace(group[0], **means, metrics=metrics, vector=vectors, trial=None, n=len(group),
                   spread={k: v for k, v in spread.items() if v is not None},
                   sources=tuple(s for r in group for s in r.sources))


def _summary(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """The mean and the sample standard deviation of the values given (None: not measured there)."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None
