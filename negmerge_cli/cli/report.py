"""negmerge report: results of searches, evaluations, the demo and reproduction runs as one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt


@opt.with_options(opt.QUIET)
def report(
    paths: Annotated[list[Path], typer.Argument(help="Results: eval --json / eval --vector --json files, a demo folder, reproduction folders (OUT, OUT/DS, OUT/DS/METHOD; the classifier one's OUT, OUT/METHOD).")],
    form: Annotated[Optional[str], typer.Option("--format", help="markdown, csv or json (default: from -o's suffix .md/.csv/.json, else markdown).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the table here instead of stdout.", dir_okay=False)] = None,
    published: Annotated[bool, typer.Option("--published", help="Put the paper's published figures (ViT-B/32) beside ours.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw every method's trade-off (retain vs forget as lambda grows) to this .png, .svg or .pdf.", dir_okay=False)] = None,
    force: opt.Force = False,
) -> None:
    """Forget and retain accuracy, lambda and kept fraction per method and forget dataset (with the
    averages), as Markdown (the paper's table), CSV or JSON."""
    from negmerge_cli.core.output import output as say
    from negmerge_cli.report.render import SUFFIX_FORMATS
    from negmerge_cli.stages import make_report

    if form is None:
        form = SUFFIX_FORMATS.get(output.suffix.lower(), "markdown") if output else "markdown"
    _, text = make_report(paths, form=form, output=output, published=published, plot=plot, force=force)
    if output is None:
        typer.echo(text, nl=False)
    else:
        say().log(f"wrote {output}")
    if plot is not None:
        say().log(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
