"""negmerge eval, classifier family: the unlearning metrics, or the lambda search (tables here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import typer

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.escape import json_text, number


def run_classifier_eval(options, *, data: Sequence[str], forget_split: Optional[str], num_classes: Optional[int],
                        reference: Optional[str], vector: Optional[str], coefs: list[float], select: str,
                        threshold: float, json_out: Optional[Path], force: bool, search_only: dict) -> None:
    """Evaluate (or search lambda for) one classifier; JSON to --json or stdout, tables on stderr."""
    from negmerge_cli.stages import (
        UnlearningEvalOptions,
        UnlearningSearchOptions,
        evaluate_unlearning,
        search_unlearning_coefficient,
    )

    for name, value in search_only.items():
        if value is not None:
            raise UsageError(f"{option(name)} belongs to the CLIP search; a classifier's search uses "
                             f"{option('data')}, {option('forget_split')} and {option('select')}")
    if len(data) != 1:
        raise UsageError(f"a classifier is evaluated on exactly one {option('data')} SPEC (got {len(data)})")
    eval_options = UnlearningEvalOptions(data=data[0], forget_split=forget_split, num_classes=num_classes,
                                         reference=reference)
    if vector is None:
        result = evaluate_unlearning(options, eval_options, json_out=json_out, force=force)
        if not json_out:
            typer.echo(json_text(result.to_json(), "stdout"), nl=False)
        _show(metrics_table("unlearning metrics", [(Path(result.checkpoint).name, result.metrics, result.avg_gap)],
                            result.reference))
        return
    search = UnlearningSearchOptions(vector=vector, coefs=coefs, select=select, threshold=threshold)
    result = search_unlearning_coefficient(options, eval_options, search, json_out=json_out, force=force)
    _show(search_table(result))
    if result.chosen is None:
        from negmerge_cli.core.errors import NegmergeError

        where = f" (all points in {json_out})" if json_out else ""
        raise NegmergeError(f"no lambda in {option('coefs')} keeps Dr accuracy >= {threshold:g} x the "
                            f"original's{where}")
    typer.echo(f"{result.chosen.coef:g}")


def metrics_table(title: str, rows, reference=None):
    """Rows of (name, UnlearningMetrics, Avg. Gap or None), in percent; the reference first."""
    from rich.table import Table

    from negmerge_cli.core.output import printable

    table = Table(title=title)
    for column in ("model", "Dr acc %", "Df acc %", "Dtest acc %", "MIA-efficacy %", "Avg. Gap"):
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold")
    if reference is not None:
        table.add_row(f"reference: {printable(Path(reference.source).name)}", *_percent(reference.metrics), "0")
    for name, metrics, gap in rows:
        table.add_row(printable(name), *_percent(metrics), number(gap))
    return table


def search_table(result):
    from rich.table import Table

    chosen = result.chosen.coef if result.chosen else None
    limit = f"; Dr bar {100 * result.retain_limit:.2f}%" if result.retain_limit is not None else ""
    table = Table(title=f"lambda search ({result.select}{limit})")
    for column in ("lambda", "Dr acc %", "Df acc %", "Dtest acc %", "MIA-efficacy %", "Avg. Gap", ""):
        table.add_column(column, justify="right")
    for p in result.points:
        if p.metrics is None:
            table.add_row(f"{p.coef:g}", *["-"] * 5, "NaN/Inf outputs")
            continue
        below = result.retain_limit is not None and p.metrics.dr_acc < result.retain_limit
        mark = "chosen" if p.coef == chosen else ("below bar" if below else "")
        table.add_row(f"{p.coef:g}", *_percent(p.metrics), number(p.avg_gap), mark)
    return table


def _percent(metrics) -> list[str]:
    return [number(v, scale=100) for v in metrics.values()]


def _show(table) -> None:
    from negmerge_cli.core.output import output

    output().show(table)
