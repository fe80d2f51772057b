"""Choosing lambda for a classifier (pure logic over evaluated points; no model in here).

How the paper chooses lambda in this scenario is not published; two rules are offered:

- ``retain-bar`` (the default, and the honest one: the paper's CLIP rule transposed): among the
  lambdas whose retained accuracy is >= threshold x the original's (lambda = 0), the one with the
  lowest Df accuracy; strict comparisons, so ties go to the smallest lambda. The retained accuracy
  is the accuracy on the split's hold-out validation set when the points carry one (``val_acc``),
  else the Dr accuracy. It reads only those two numbers of each point, data an unlearner holds,
  never Dtest, MIA-efficacy (its non-members are Dtest) nor a retrained model, so Dtest stays a
  clean test. In random forgetting it tends to overshoot (Df accuracy below the retrained model's).
- ``gap`` (the **oracle**): the lambda with the smallest Avg. Gap to a given retrained model,
  measured on the reported Dr/Df/Dtest/MIA-efficacy; ties to the smallest lambda. A real unlearner
  has neither the retrained model nor Dtest: for benchmarking only, and every output says so.

The best single task vector is chosen by the same rule (:func:`best_single`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.results import ClassifierSearchPoint

SELECT_RULES = ("retain-bar", "gap")
DEFAULT_SELECT = "retain-bar"
ORACLE_RULES = frozenset({"gap"})
RULES = {
    "retain-bar": "lowest Df acc among coefs with {retained} >= threshold x the original's (coef 0); "
                  "reads only {retained} and Df acc, never Dtest nor the reference; ties to the smallest coef",
    "gap": "oracle: smallest Avg. Gap to the reference (retrained) model over Dr/Df/Dtest/MIA-efficacy; "
           "reads the reference and Dtest, which an unlearner does not hold: for benchmarking only; "
           "ties to the smallest coef",
}
GAP_READS = ("dr_acc", "df_acc", "dtest_acc", "mia_efficacy", "reference")
RETAINED_NAMES = {"dr_acc": "Dr acc", "val_acc": "hold-out val acc"}


def check_select(select: str, has_reference: bool) -> None:
    if select not in SELECT_RULES:
        raise UsageError(f"{option('select')} {select!r}: choose retain-bar or gap (the oracle)")
    if select == "gap" and not has_reference:
        raise UsageError(f"{option('select')} gap (the oracle) needs {option('reference')} "
                         "(the retrained model or its eval JSON)")


def is_oracle(rule: str) -> bool:
    """Whether the rule reads what a real unlearner does not hold (a retrained model, Dtest)."""
    return rule in ORACLE_RULES


def retained_metric(points: Sequence[ClassifierSearchPoint]) -> str:
    """``val_acc`` when the original (lambda 0) was measured on a hold-out validation set, else ``dr_acc``."""
    base = [p for p in points if p.coef == 0 and p.metrics is not None]
    return "val_acc" if base and base[0].val_acc is not None else "dr_acc"


def reads(rule: str, points: Sequence[ClassifierSearchPoint]) -> tuple[str, ...]:
    """The metrics the rule reads (the search JSON's ``reads``)."""
    return GAP_READS if rule == "gap" else (retained_metric(points), "df_acc")


def describe(rule: str, points: Sequence[ClassifierSearchPoint]) -> str:
    """The rule as the search JSON's ``rule`` says it."""
    return RULES[rule].format(retained=RETAINED_NAMES[retained_metric(points)])


def _retained(point: ClassifierSearchPoint, metric: str) -> Optional[float]:
    return point.val_acc if metric == "val_acc" else point.metrics.dr_acc


def retain_limit(points: Sequence[ClassifierSearchPoint], threshold: float) -> float:
    """threshold x the retained accuracy (hold-out val, else Dr) of the unmodified model (lambda 0)."""
    base = [p for p in points if p.coef == 0 and p.metrics is not None]
    if not base:
        raise UsageError(f"{option('coefs')}: the retain-bar rule needs lambda 0 (the original) in the grid")
    return threshold * _retained(base[0], retained_metric(points))


def _evaluated(points: Sequence[ClassifierSearchPoint]) -> list[ClassifierSearchPoint]:
    """Points with metrics, by lambda (a point whose outputs were NaN/Inf cannot be chosen)."""
    return sorted((p for p in points if p.metrics is not None), key=lambda p: p.coef)


def select_retain_bar(points: Sequence[ClassifierSearchPoint], threshold: float) -> Optional[ClassifierSearchPoint]:
    """The honest rule: reads each point's retained accuracy (val or Dr) and Df accuracy, nothing else."""
    limit, metric = retain_limit(points, threshold), retained_metric(points)
    best = None
    for point in _evaluated(points):
        retained = _retained(point, metric)
        if retained is None or retained < limit:
            continue
        if best is None or point.metrics.df_acc < best.metrics.df_acc:
            best = point
    return best


def select_gap(points: Sequence[ClassifierSearchPoint]) -> Optional[ClassifierSearchPoint]:
    """The oracle: the smallest Avg. Gap to the retrained model."""
    best = None
    for point in _evaluated(points):
        if point.avg_gap is None:
            raise UsageError(f"{option('select')} gap: lambda {point.coef:g} has no Avg. Gap (no reference)")
        if best is None or point.avg_gap < best.avg_gap:
            best = point
    return best


def select(points: Sequence[ClassifierSearchPoint], rule: str, threshold: float) -> Optional[ClassifierSearchPoint]:
    return select_gap(points) if rule == "gap" else select_retain_bar(points, threshold)


def at_grid_end(points: Sequence[ClassifierSearchPoint], chosen: Optional[ClassifierSearchPoint]) -> bool:
    """The chosen lambda is the grid's largest (and the grid has more than one): the best may lie beyond."""
    coefs = [p.coef for p in points]
    return chosen is not None and len(set(coefs)) > 1 and chosen.coef == max(coefs)


def wider_grid(points: Sequence[ClassifierSearchPoint]) -> str:
    """A ``--coefs`` START:STOP:NUM over twice the span at the same step (0:1:21 gives 0:2:41)."""
    coefs = sorted({p.coef for p in points})
    low, high = coefs[0], coefs[-1]
    return f"{low:g}:{low + 2 * (high - low):g}:{2 * (len(coefs) - 1) + 1}"


def grid_end_warning(points: Sequence[ClassifierSearchPoint], chosen: ClassifierSearchPoint) -> str:
    return (f"the chosen lambda {chosen.coef:g} is the grid's last point: the best lambda may lie beyond it; "
            f"extend the grid (e.g. {option('coefs')} {wider_grid(points)})")


def best_single(candidates: Sequence[tuple[Optional[ClassifierSearchPoint], str]]) -> Optional[int]:
    """Which single task vector wins, by the rule its search used: ``candidates`` are each vector's
    (chosen point, rule) in order. retain-bar: the lowest Df acc at the chosen lambda (every chosen
    point already passed the bar), ties to the higher retained accuracy, then the first; gap (the
    oracle): the smallest Avg. Gap, ties to the first. None when no search chose a lambda."""
    rules = {rule for _, rule in candidates}
    if len(rules) > 1:
        raise UsageError(f"the single vectors were searched by different rules ({', '.join(sorted(rules))})")
    feasible = [(order, point) for order, (point, _) in enumerate(candidates) if point is not None]
    if not feasible:
        return None
    if rules == {"gap"}:
        return min(feasible, key=lambda pair: (pair[1].avg_gap, pair[0]))[0]

    def retained(point: ClassifierSearchPoint) -> float:
        return point.val_acc if point.val_acc is not None else point.metrics.dr_acc

    return min(feasible, key=lambda pair: (pair[1].metrics.df_acc, -retained(pair[1]), pair[0]))[0]
