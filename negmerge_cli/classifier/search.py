"""Choosing lambda for a classifier (pure logic over evaluated points; no model in here).

How the paper chooses lambda in this scenario is not published; two rules are offered:

- ``retain-bar`` (the default; the paper's CLIP rule transposed): among the lambdas whose Dr
  accuracy is >= threshold x the original's (lambda = 0), the one with the lowest Df accuracy;
  strict comparisons, so ties go to the smallest lambda. It looks only at the training data an
  unlearner holds (Dr and Df), never at Dtest nor at a retrained model, so Dtest stays a clean
  test. In random forgetting it tends to overshoot (Df accuracy below the retrained model's).
- ``gap``: the lambda with the smallest Avg. Gap to a given retrained model; ties to the smallest
  lambda. It needs the retrained model, which a real unlearner does not have: for benchmarking.
"""

from __future__ import annotations

from typing import Optional, Sequence

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.results import ClassifierSearchPoint

SELECT_RULES = ("retain-bar", "gap")
RULES = {
    "retain-bar": "lowest Df acc among coefs with Dr acc >= threshold x the original's (coef 0); ties to the smallest coef",
    "gap": "smallest Avg. Gap to the reference (retrained) model; ties to the smallest coef",
}


def check_select(select: str, has_reference: bool) -> None:
    if select not in SELECT_RULES:
        raise UsageError(f"{option('select')} {select!r}: choose retain-bar or gap")
    if select == "gap" and not has_reference:
        raise UsageError(f"{option('select')} gap needs {option('reference')} (the retrained model or its eval JSON)")


def retain_limit(points: Sequence[ClassifierSearchPoint], threshold: float) -> float:
    """threshold x the Dr accuracy of the unmodified model (the point at lambda 0)."""
    base = [p for p in points if p.coef == 0 and p.metrics is not None]
    if not base:
        raise UsageError(f"{option('coefs')}: the retain-bar rule needs lambda 0 (the original) in the grid")
    return threshold * base[0].metrics.dr_acc


def _evaluated(points: Sequence[ClassifierSearchPoint]) -> list[ClassifierSearchPoint]:
    """Points with metrics, by lambda (a point whose outputs were NaN/Inf cannot be chosen)."""
    return sorted((p for p in points if p.metrics is not None), key=lambda p: p.coef)


def select_retain_bar(points: Sequence[ClassifierSearchPoint], threshold: float) -> Optional[ClassifierSearchPoint]:
    limit = retain_limit(points, threshold)
    best = None
    for point in _evaluated(points):
        if point.metrics.dr_acc >= limit and (best is None or point.metrics.df_acc < best.metrics.df_acc):
            best = point
    return best


def select_gap(points: Sequence[ClassifierSearchPoint]) -> Optional[ClassifierSearchPoint]:
    best = None
    for point in _evaluated(points):
        if point.avg_gap is None:
            raise UsageError(f"{option('select')} gap: lambda {point.coef:g} has no Avg. Gap (no reference)")
        if best is None or point.avg_gap < best.avg_gap:
            best = point
    return best


def select(points: Sequence[ClassifierSearchPoint], rule: str, threshold: float) -> Optional[ClassifierSearchPoint]:
    return select_gap(points) if rule == "gap" else select_retain_bar(points, threshold)
