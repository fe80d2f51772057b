"""negmerge apply: theta = BASE + SCALE * VECTOR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import report, stream_options


def apply(
    base: Annotated[Path, typer.Option("--base", "-b", help="The checkpoint to modify.")],
    vector: Annotated[Path, typer.Option("--vector", "-v", help="Task vector to add.")],
    scale: Annotated[float, typer.Option("--scale", "-s", help="Coefficient; negative to unlearn (e.g. -0.9).")],
    output: opt.Output,
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    max_memory: opt.MaxMemory = "1GB",
    shard_size: opt.ShardSize = None,
    allow_nonfinite: opt.AllowNonFinite = False,
    no_hash: opt.NoHash = False,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
) -> None:
    """Write BASE + SCALE * VECTOR; tensors the vector lacks and non-float tensors are copied from BASE."""
    from negmerge_cli.stages.apply import apply_vector

    options = stream_options(device, dtype, max_memory, shard_size, force, quiet,
                             allow_nonfinite=allow_nonfinite, no_hash=no_hash)
    report(apply_vector(base, vector, scale, output, options), quiet)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
