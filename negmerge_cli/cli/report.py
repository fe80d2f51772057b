"""negmerge report: results of searches, evaluations, the demo and reproduction runs as one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt


@opt.with_options(opt.QUIET)
def report(
    paths: Annotated[list[Path], typer.Argument(help="Results: eval --json / eval --vector --json files (CLIP or classifier), a demo folder (either scenario), reproduction folders (OUT, OUT/DS, OUT/DS/METHOD; the classifier one's OUT, OUT/METHOD).")],
    form: Annotated[Optional[str], typer.Option("--format", help="markdown, csv or json (default: from -o's suffix .md/.csv/.json, else markdown).")] = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the table here instead of stdout.", dir_okay=False)] = None,
    published: Annotated[bool, typer.Option("--published", help="Add the published figures: beside ours for rows of their setting (CLIP: ViT-B/32 on the paper's forget sets), else apart, marked as another setting.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw every method's trade-off (retain vs forget as lambda grows) to this .png, .svg or .pdf.", dir_okay=False)] = None,
    force: opt.Force = False,
) -> None:
    """Forget and retain accuracy, lambda, non-zero and kept fractions per method and forget dataset (with the
    averages), as Markdown (the paper's table), CSV or JSON."""
    from negmerge_cli.core.output import output
    from negmerge_cli.report.render import SUFFIX_FORMATS
    from negmerge_cli.stages import make_report

    if form is None:
        form = SUFFIX_FORMATS.get(output_file.suffix.lower(), "markdown") if output_file else "markdown"
    _, text = make_report(paths, form=form, output=output_file, published=published, plot=plot, force=force)
    if output_file is None:
        typer.echo(text, nl=False)
    else:
        output().log(f"wrote {output_file}")
    if plot is not None:
        output().log(f"wrote {plot}")


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("report", short_help="Tabulate results per method and dataset, like the paper.",
                epilog=epilog("report"))(report)
