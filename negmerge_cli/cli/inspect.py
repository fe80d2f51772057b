"""negmerge inspect: tensors, metadata and totals of any safetensors checkpoint."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.core.escape import json_text


@opt.with_options(opt.SELECTION, opt.QUIET)
def inspect(
    path: Annotated[str, typer.Argument(help="A .safetensors file, a sharded index, a folder, or a Hub repo id ORG/NAME[@REVISION].")],
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
        typer.echo(json_text(summary.to_json(), "stdout"), nl=False)
    else:
        _print_tables(summary)


def _print_tables(summary) -> None:
    """The summary is this command's result: it goes to stdout (unlike logs, which go to stderr).
    Names are never cut: a name too long for the terminal (or a pipe's 80 columns) is wrapped at
    its dots, and folded only where one component is longer than the column."""
    from rich.table import Table

    from negmerge_cli.checkpoint.zero_tensors import ZERO_TENSORS_KEY
    from negmerge_cli.core.output import plain_console, printable

    console = plain_console()  # names show as they are: no Rich markup

    counted = summary.nonzero_fraction is not None
    columns = ("tensor", "dtype", "shape", "elements") + (("non-zero",) if counted else ())
    rows = []
    for tensor in summary.tensors:
        fraction = tensor.nonzero_fraction
        rows.append([printable(tensor.name), tensor.dtype, str(tuple(tensor.shape)), f"{tensor.numel:,}",
                     *((f"{fraction:.2%}" if fraction is not None else "-",) if counted else ())])
    name_width = _name_width(console.width, columns, rows)
    table = Table(title=printable(summary.path), title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("elements", "non-zero") else "left",
                         overflow="fold")
    for name, *rest in rows:
        table.add_row(wrap_name(name, name_width), *rest)
    console.print(table)
    console.print(_prefix_table(summary, counted))
    if summary.metadata:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for column in meta.columns:
            column.overflow = "fold"
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


def _prefix_table(summary, counted: bool):
    from rich.table import Table

    from negmerge_cli.core.output import printable

    table = Table(title="by name prefix", title_justify="left")
    for column in ("prefix", "tensors", "elements") + (("non-zero",) if counted else ()):
        table.add_column(column, justify="left" if column == "prefix" else "right", overflow="fold")
    for group in summary.prefixes():
        fraction = group.nonzero_fraction
        table.add_row(printable(group.pattern), f"{group.tensors:,}",
                      f"{group.numel:,}", *((f"{fraction:.2%}" if fraction is not None else "-",) if counted else ()))
    return table


def _name_width(width: int, columns: tuple[str, ...], rows: list[list[str]]) -> int:
    """What the name column can have once the other columns and the borders (3 characters per
    column, plus 1) have theirs."""
    others = sum(max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns) if i)
    return max(16, width - others - 3 * len(columns) - 1)


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken after dots where it is too long."""
    if len(name) <= width:
        return name
    lines, line = [], ""
    for part in name.split("."):
        piece = part if not line and not lines else "." + part
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = piece
        else:
            line += piece
    return "\n".join(lines + [line])


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("inspect", short_help="Show a checkpoint's tensors, metadata and sparsity.",
                epilog=epilog("inspect"))(inspect)
