"""negmerge inspect: tensors, metadata and totals of any safetensors checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt


@opt.with_options(opt.SELECTION, opt.QUIET)
def inspect(
    path: Annotated[Path, typer.Argument(help="A .safetensors file, a sharded index, or a folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    nonzero: Annotated[
        Optional[bool],
        typer.Option("--nonzero/--no-nonzero", help="Count non-zero elements (default: for task vectors)."),
    ] = None,
    selection=None,
) -> None:
    """Show what a checkpoint holds (the selected tensors); for task vectors also the non-zero
    fraction per tensor."""
    from negmerge_cli.stages import inspect_checkpoint

    summary = inspect_checkpoint(path, nonzero, selection)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _print_tables(summary)


def _print_tables(summary) -> None:
    """The summary is this command's result: it goes to stdout (unlike logs, which go to stderr)."""
    from rich.console import Console
    from rich.table import Table

    from negmerge_cli.checkpoint.zero_tensors import ZERO_TENSORS_KEY
    from negmerge_cli.output import printable

    console = Console(highlight=False)

    counted = summary.nonzero_fraction is not None
    table = Table(title=printable(summary.path), title_justify="left")
    for column in ("tensor", "dtype", "shape", "elements") + (("non-zero",) if counted else ()):
        table.add_column(column, justify="right" if column in ("elements", "non-zero") else "left",
                         overflow="fold")
    for tensor in summary.tensors:
        fraction = tensor.nonzero_fraction
        row = [printable(tensor.name), tensor.dtype, str(tuple(tensor.shape)), f"{tensor.numel:,}"]
        table.add_row(*row, *((f"{fraction:.2%}" if fraction is not None else "-",) if counted else ()))
    console.print(table)
    if summary.metadata:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for key, value in summary.metadata.items():
            if key == ZERO_TENSORS_KEY:  # can be long: the tensors are summarised below instead
                value = f"{len(json.loads(value))} tensors (see --json)"
            meta.add_row(printable(key), printable(value))
        console.print(meta)
    console.print(printable(_totals(summary, counted)), markup=False, soft_wrap=True)


def _totals(summary, counted: bool) -> str:
    by_dtype = ", ".join(f"{dtype}: {count:,}" for dtype, count in summary.dtypes.items())
    kind = "task vector" if summary.is_task_vector else "checkpoint"
    if summary.selection.restricts:
        size = f"{summary.tensor_bytes:,} bytes of tensor data (selected by {summary.selection.describe()})"
    else:
        size = f"{summary.total_bytes:,} bytes"
    line = f"{kind}: {len(summary.tensors)} tensors, {summary.numel:,} elements ({by_dtype}), {size}"
    if summary.zero_tensors:
        omitted = sum(t.numel for t in summary.zero_tensors)
        line += f"; {len(summary.zero_tensors)} all-zero tensors ({omitted:,} elements) left out of the file"
    if counted:
        line += f"; non-zero {summary.nonzero_fraction:.2%} of float elements"
    return line


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
