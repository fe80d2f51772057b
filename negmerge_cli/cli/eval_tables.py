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
    held_out = "val_acc" in result.reads
    gap = "Avg. Gap (oracle)" if result.oracle else "Avg. Gap"
    table = Table(title=search_title(result), caption=search_caption(result))
    for column in ("lambda", *(("val acc %",) if held_out else ()), "Dr acc %", "Df acc %", "Dtest acc %",
                   "MIA-efficacy %", gap, ""):
        table.add_column(column, justify="right")
    for p in result.points:
        val = (number(p.val_acc, scale=100),) if held_out else ()
        if p.metrics is None:
            table.add_row(f"{p.coef:g}", *["-"] * (len(val) + 5), "NaN/Inf outputs")
            continue
        retained = p.val_acc if held_out else p.metrics.dr_acc
        below = result.retain_limit is not None and (retained is None or retained < result.retain_limit)
        mark = "chosen" if p.coef == chosen else ("below bar" if below else "")
        table.add_row(f"{p.coef:g}", *val, *_percent(p.metrics), number(p.avg_gap), mark)
    return table


def search_title(result) -> str:
    """The classifier search table's title: the rule, what it read, and ORACLE for ``gap``."""
    if result.oracle:
        return (f"lambda search ({result.select}: ORACLE, chosen with the retrained model and Dtest, "
                "which an unlearner does not hold; for benchmarking only)")
    retained = "hold-out val" if "val_acc" in result.reads else "Dr"
    limit = f"; {retained} bar {100 * result.retain_limit:.2f}%" if result.retain_limit is not None else ""
    return f"lambda search ({result.select}: reads {retained} and Df only{limit})"


def search_caption(result):
    if result.chosen is not None and result.at_grid_end:
        return f"lambda {result.chosen.coef:g} is the grid's last point: extend the grid (--coefs)"
    return None


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
