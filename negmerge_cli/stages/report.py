"""``report``: the results of searches, evaluations, the demo and the reproduction as one table of
methods x datasets (Markdown, CSV or JSON) and, on request, the trade-off figure of every method."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import files
from negmerge_cli.report.rows import Report


def make_report(paths: Sequence[str | Path], *, form: str = "markdown", output: Optional[Path] = None,
                published: bool = False, plot: Optional[Path] = None, force: bool = False) -> tuple[Report, str]:
    """Read ``paths``, render the table as ``form`` (written to ``output`` when given) and draw the
    trade-off figure to ``plot`` (PNG, SVG or PDF by suffix). Returns the report and its text."""
    from negmerge_cli.report import collect
    from negmerge_cli.report.plots import check_plot_path, save, tradeoff
    from negmerge_cli.report.render import check_format, render

    with files.operation():
        check_format(form)
        if plot is not None:
            check_plot_path(plot)
        for target in (output, plot):  # fail before reading anything, not after
            if target is not None:
                files.check_target(Path(target), force=force)
        report = collect([Path(p) for p in paths])
        text = render(report, form, published)
        with files.deferred_commits():  # the table and the figure together, or neither
            if plot is not None:
                title = f"{report.model}: retain against forget accuracy as λ grows" if report.model else ""
                save(tradeoff(report.curves, title), Path(plot), force=force)
            if output is not None:
                files.write_text(output, text, force=force)
        return report, text
