"""negmerge apply: theta = BASE + SCALE * VECTOR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import report


@opt.with_options(opt.STREAMING.only("device", "dtype", "max_memory", "shard_size", "allow_nonfinite", "no_hash",
                                     "rehash", "force"), opt.SELECTION, opt.QUIET)
def apply(
    base: Annotated[Path, typer.Option("--base", "-b", help="The checkpoint to modify.")],
    vector: Annotated[Path, typer.Option("--vector", "-v", help="Task vector to add.")],
    scale: Annotated[float, typer.Option("--scale", "-s", help="Coefficient; negative to unlearn (e.g. -0.9).")],
    output: opt.Output,
    selection=None,
    stream=None,
) -> None:
    """Write BASE + SCALE * VECTOR over the selected tensors; every other tensor (not selected, not in
    the vector, or not floating-point) is copied from BASE."""
    from negmerge_cli.stages import apply_vector

    report(apply_vector(base, vector, scale, output, stream, selection))


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
