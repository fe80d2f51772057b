"""negmerge inspect: tensors, metadata and totals of any safetensors checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from negmerge_cli.stages.inspect import CheckpointSummary, inspect_checkpoint


def inspect(
    path: Annotated[Path, typer.Argument(help="A .safetensors file, a sharded index, or a folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    nonzero: Annotated[
        Optional[bool],
        typer.Option("--nonzero/--no-nonzero", help="Count non-zero elements (default: for task vectors)."),
    ] = None,
) -> None:
    """Show what a checkpoint holds; for task vectors also the non-zero fraction per tensor."""
    summary = inspect_checkpoint(path, nonzero)
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        _print_tables(summary, Console())


def _print_tables(summary: CheckpointSummary, console: Console) -> None:
    counted = summary.nonzero_fraction is not None
    table = Table(title=summary.path, title_justify="left")
    for column in ("tensor", "dtype", "shape", "elements") + (("non-zero",) if counted else ()):
        table.add_column(column, justify="right" if column in ("elements", "non-zero") else "left")
    for tensor in summary.tensors:
        fraction = tensor.nonzero_fraction
        row = [tensor.name, tensor.dtype, str(tuple(tensor.shape)), f"{tensor.numel:,}"]
        table.add_row(*row, *((f"{fraction:.2%}" if fraction is not None else "-",) if counted else ()))
    console.print(table)
    if summary.metadata:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for key, value in summary.metadata.items():
            meta.add_row(key, value)
        console.print(meta)
    by_dtype = ", ".join(f"{dtype}: {count:,}" for dtype, count in summary.dtypes.items())
    kind = "task vector" if summary.is_task_vector else "checkpoint"
    line = f"{kind}: {len(summary.tensors)} tensors, {summary.numel:,} elements ({by_dtype}), {summary.total_bytes:,} bytes"
    if counted:
        line += f", non-zero {summary.nonzero_fraction:.2%} of float elements"
    console.print(line, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
