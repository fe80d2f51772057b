"""negmerge eval's tables on stderr, for each family's results: zero-shot accuracy per dataset and
the forget/retain search (CLIP); the unlearning metrics and their search (classifiers)."""

from __future__ import annotations

import json
from pathlib import Path

from negmerge_cli.core.escape import number


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


def _zeroshot_table(results) -> None:
    from rich.table import Table

    from negmerge_cli.core.output import output, printable

    table = Table(title="zero-shot classification")
    for column in ("dataset", "images", "acc1 %", "acc5 %", "per-class recall %", "img/s"):
        table.add_column(column, justify="right" if column != "dataset" else "left", overflow="fold")
    for r in results:
        m = r.metrics
        table.add_row(printable(r.dataset), str(r.n_images), *(number(v, scale=100) for v in
                                                                  (m.acc1, m.acc5, m.mean_per_class_recall)),
                      number(r.images_per_s, ".0f"))
    output().show(table)


def _clip_search_table(result) -> None:
    from rich.table import Table

    from negmerge_cli.core.output import output

    chosen = result.chosen.coef if result.chosen else None
    table = Table(title=f"lambda search ({result.search}; retain bar {100 * result.retain_limit:.2f}%)")
    for column in ("lambda", "forget acc1 %", "retain acc1 %", ""):
        table.add_column(column, justify="right")
    for p in result.points:
        mark = "chosen" if p.coef == chosen else ("" if p.retain >= result.retain_limit else "below bar")
        table.add_row(f"{p.coef:g}", number(p.forget, scale=100), number(p.retain, scale=100), mark)
    output().show(table)
    heads = "rebuilt per coefficient" if result.heads_rebuilt else "built once"
    output().log(f"{result.evaluations} full evaluations in {result.seconds:.1f} s; heads {heads}")
    if result.agreement() is not None:
        output().log(f"fast vs grid: {json.dumps(result.agreement())}")


def show_evaluation(result) -> None:
    """The table of ``eval``'s result: a list of CLIP datasets, or one classifier evaluation."""
    if isinstance(result, list):
        _zeroshot_table(result)
    else:
        _show(metrics_table("unlearning metrics", [(Path(result.checkpoint).name, result.metrics, result.avg_gap)],
                            result.reference))


def show_search(result) -> None:
    from negmerge_cli.results import SearchResult

    if isinstance(result, SearchResult):
        _clip_search_table(result)
    else:
        _show(search_table(result))
