"""negmerge vector: task vectors tau = FINETUNED - BASE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import report, stream_options
from negmerge_cli.errors import UsageError


def vector(
    finetuned: Annotated[list[Path], typer.Argument(help="Fine-tuned checkpoint(s): file, index or folder.")],
    base: Annotated[Path, typer.Option("--base", "-b", help="The checkpoint the fine-tunes started from.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (one input).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Output folder: one vector per input, named after it.")] = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = None,
    max_memory: opt.MaxMemory = "1GB",
    shard_size: opt.ShardSize = None,
    missing_as_zero: opt.MissingAsZero = False,
    allow_nonfinite: opt.AllowNonFinite = False,
    no_hash: opt.NoHash = False,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
) -> None:
    """Write the task vector FINETUNED - BASE (floating-point tensors only)."""
    from negmerge_cli.stages.vector import make_vector, make_vectors

    if (output is None) == (out_dir is None):
        raise UsageError("give exactly one of --output (one input) or --out-dir (any number of inputs)")
    if output is not None and len(finetuned) != 1:
        raise UsageError(f"--output takes one input, got {len(finetuned)}; use --out-dir for several")
    options = stream_options(device, dtype, max_memory, shard_size, force, quiet, missing_as_zero,
                             allow_nonfinite, no_hash)
    if output is not None:
        results = [make_vector(base, finetuned[0], output, options)]
    else:
        results = make_vectors(base, finetuned, out_dir, options)
    for result in results:
        report(result, quiet)


def register(app: typer.Typer) -> None:
    app.command("vector")(vector)
