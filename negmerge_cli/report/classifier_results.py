"""The classifier side of ``report``: a classifier's ``eval --json`` and ``eval --vector --json``
(its lambda search), and the classifier demo's ``results.json``, as report rows.

Df and Dr accuracy are the row's forget and retain accuracy; Dtest accuracy and MIA-efficacy
(fractions) and the Avg. Gap (percentage points) its optional metrics. A search's row holds the
metrics at the chosen lambda as the search measured them (on Dr, Df and Dtest themselves: split
``search``); an eval of the model it chose completes it. A search's curve goes to the figure as Df
against Dr accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Optional

from pydantic import Field

from negmerge_cli.core.schema import Fraction, NonNegative, Positive, Schema
from negmerge_cli.report.rows import HEADLINE, Curve, Found, ResultRow
from negmerge_cli.results import (
    ClassifierEvaluation,
    ClassifierSearchPoint,
    ClassifierSearchResult,
    SearchPoint,
    SearchResult,
    SearchRun,
    UnlearningMetrics,
)
from negmerge_cli.results.files import ClassifierSearchPointFile

CLASSIFIER_DEMO = "classifier_demo"  # kind of the classifier demo's results.json ("scenario": "classifier")
ORACLE = "oracle_gap"  # the setting of rows whose lambda the Avg. Gap chose (it reads the retrained model)
SEARCH_SPLIT = "search"


class ClassifierDemoRowFile(Schema):
    coef: Optional[float] = Field(None, alias="lambda")
    dr_acc: Fraction
    df_acc: Fraction
    dtest_acc: Fraction
    mia_efficacy: Fraction
    avg_gap_points: Optional[NonNegative] = None
    oracle_lambda: Optional[float] = None
    oracle_gap: Optional[NonNegative] = None
    nonzero_fraction: Optional[Fraction] = None
    kept_fraction: Optional[Fraction] = None
    vector: Optional[str] = None


class ClassifierDemoFile(Schema):
    """``negmerge demo --scenario classifier``'s results.json."""

    scenario: Literal["classifier"]
    model: str
    data: str
    k: Positive
    rule: str
    rows: dict[str, ClassifierDemoRowFile]
    curves: dict[str, list[ClassifierSearchPointFile]] = {}


def metrics_of(metrics: UnlearningMetrics, avg_gap: Optional[float]) -> dict[str, float]:
    extra = {"dtest_acc": metrics.dtest_acc, "mia_efficacy": metrics.mia_efficacy}
    return extra | ({"avg_gap_points": avg_gap} if avg_gap is not None else {})


def from_evaluation(path: Path, evaluation: ClassifierEvaluation, method: str) -> Found:
    m = evaluation.metrics
    row = ResultRow(method, str(evaluation.data.get("dataset", "?")), m.df_acc, m.dr_acc,
                    metrics=metrics_of(m, evaluation.avg_gap), sources=(str(path),))
    return Found([row], [], [evaluation.model], [])


def from_search(path: Path, result: ClassifierSearchResult, method: str) -> Found:
    """The chosen point's metrics (none when nothing kept the bar), and the curve."""
    dataset = str(result.data.get("dataset", "?"))
    setting = ORACLE if result.oracle else HEADLINE
    chosen = result.chosen
    if chosen is not None and chosen.metrics is None:
        chosen = None
    row = ResultRow(method, dataset, chosen.metrics.df_acc if chosen else None, chosen.metrics.dr_acc if chosen else None,
                    split=SEARCH_SPLIT, coef=chosen.coef if chosen else None, setting=setting,
                    metrics=metrics_of(chosen.metrics, chosen.avg_gap) if chosen else {}, sources=(str(path),))
    found = Found([row], [], [result.model], [], _titles(setting))
    curve = as_curve(result, dataset, chosen)
    if curve is not None:
        found.curves.append(Curve(method, dataset, curve, setting))
    return found


def as_curve(result: ClassifierSearchResult, dataset: str,
             chosen: Optional[ClassifierSearchPoint]) -> Optional[SearchResult]:
    """The search as the figure draws a CLIP search: forget = Df accuracy, retain = Dr accuracy."""
    points = [_point(p) for p in result.points if p.metrics is not None]
    if not points:
        return None
    base = min(points, key=lambda p: abs(p.coef))
    limit = result.retain_limit if result.retain_limit is not None else 0.0  # gap: no retain bar
    return SearchResult(
        model=result.model, checkpoint=result.checkpoint, vector=result.vector, forget=f"{dataset}:Df",
        retain=f"{dataset}:Dr", threshold=result.threshold, retain_limit=limit, search="grid",
        coefs=[p.coef for p in points], base=base, n_forget_images=int(result.counts.get("df", 0)),
        n_retain_images=int(result.counts.get("dr", 0)),
        runs={"grid": SearchRun(_point(chosen) if chosen else None, points, len(points), result.seconds)},
        evaluations=len(points), heads_rebuilt=False, seconds=result.seconds, base_retain=base.retain,
        base_retain_source="lambda 0")


def _point(point: ClassifierSearchPoint) -> SearchPoint:
    return SearchPoint(point.coef, point.metrics.df_acc, point.metrics.dr_acc)


def _titles(setting: str) -> dict[str, str]:
    return {ORACLE: "oracle: lambda with the smallest Avg. Gap (reads the retrained model)"} if setting == ORACLE else {}


def from_demo(path: Path, demo: ClassifierDemoFile, read_search: Callable[[Path], ClassifierSearchResult]) -> Found:
    """Every row of the classifier demo (the retain-bar rule's lambda), the searches it wrote
    (``search/<method>.json``, read by ``read_search``) as curves, and each vector method at its
    oracle lambda (the grid's smallest Avg. Gap, read off its curve) as a second setting."""
    found = Found(models=[demo.model], titles={HEADLINE: f"lambda by {demo.rule}"})
    for method, row in demo.rows.items():
        coef = None if method in ("original", "retrain") else row.coef
        metrics = UnlearningMetrics(row.dr_acc, row.df_acc, row.dtest_acc, row.mia_efficacy)
        found.rows.append(ResultRow(method, demo.data, row.df_acc, row.dr_acc, coef=coef,
                                    metrics=metrics_of(metrics, row.avg_gap_points), nonzero=row.nonzero_fraction,
                                    kept=row.kept_fraction, vector=row.vector, sources=(str(path),)))
        oracle = next((p for p in demo.curves.get(method, []) if row.oracle_lambda is not None
                       and p.coef == row.oracle_lambda and p.dr_acc is not None), None)
        if oracle is not None:
            found.titles.update(_titles(ORACLE))
            point = oracle.build()
            found.rows.append(ResultRow(method, demo.data, point.metrics.df_acc, point.metrics.dr_acc, split=SEARCH_SPLIT,
                                        coef=point.coef, setting=ORACLE, metrics=metrics_of(point.metrics, point.avg_gap),
                                        nonzero=row.nonzero_fraction, kept=row.kept_fraction, vector=row.vector,
                                        sources=(str(path),)))
        search = path.parent / "search" / f"{method}.json"
        if coef is not None and search.is_file():
            found.curves += from_search(search, read_search(search), method).curves
    return found
