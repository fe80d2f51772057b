"""Reports of results: tables of methods x datasets (Markdown, CSV, JSON) and figures.

``readers`` turns the JSON the tool writes into :class:`~negmerge_cli.report.rows.ResultRow` s,
``render`` prints them, ``plots`` draws the search curve and the methods' trade-off, and
``published`` holds the paper's figures. The library call is ``negmerge_cli.stages.make_report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from negmerge_cli.core.errors import UsageError
from negmerge_cli.report import trials
from negmerge_cli.report.readers import read_path
from negmerge_cli.report.rows import DATASET_ORDER, METHOD_ORDER, Found, Report, ResultRow, with_kept


def collect(paths: Sequence[Path]) -> Report:
    """Every row and curve the paths hold; the same method on the same dataset twice is refused
    unless the two complement each other (a search and the test of the model it chose) or come
    from different trials (``OUT/trial-K``: one row, their mean, :mod:`~negmerge_cli.report.trials`)."""
    if not paths:
        raise UsageError("give at least one results file or folder")
    found = Found()
    for path in paths:
        found.add(read_path(Path(path)))
    rows = with_kept(sorted(trials.combine(_combined([trials.tagged(r) for r in found.rows])), key=_row_order))
    return Report(rows, found.curves, _joined(found.models), _joined(found.retain), found.titles)


def _combined(rows: list[ResultRow]) -> list[ResultRow]:
    """Within each trial (or without trials): a search and its eval completed into one row."""
    table: dict[tuple, ResultRow] = {}
    for row in rows:
        key = (row.trial, *row.key)
        have = table.get(key)
        if have is None:
            table[key] = row
        elif have.forget is not None and row.forget is not None and have.split == row.split:  # search + its eval: complete
            raise UsageError(f"two results for {row.method} on {row.dataset}: {have.sources[0]} and "
                             f"{row.sources[0]}; report them separately")
        else:
            table[key] = have.merged(row)
    trials.check_mixed(table.values())
    return list(table.values())


def _row_order(row: ResultRow):
    rank = lambda name, known: known.index(name) if name in known else len(known)
    return row.setting != "", rank(row.method, METHOD_ORDER), rank(row.dataset, DATASET_ORDER)


def _joined(names: list[str]):
    unique = list(dict.fromkeys(n for n in names if n))
    return ", ".join(unique) if unique else None
