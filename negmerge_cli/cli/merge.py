"""negmerge merge: combine task vectors with NegMerge or a baseline method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import report, stream_options
from negmerge_cli.methods import REGISTRY

_METHODS_HELP = "Merge method: " + "; ".join(f"{name}: {cls.summary}" for name, cls in sorted(REGISTRY.items()))


def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Task vectors, or fine-tuned checkpoints with --base.")],
    output: opt.Output,
    method: Annotated[str, typer.Option("--method", "-m", help=_METHODS_HELP)] = "negmerge",
    base: Annotated[Optional[Path], typer.Option("--base", "-b", help="Form vectors on the fly as INPUT - BASE.")] = None,
    weight: Annotated[Optional[list[float]], typer.Option("--weight", "-w", help="Per-input weight, once per input in order (sum, mean, dare).")] = None,
    density: Annotated[Optional[float], typer.Option(help="ties: fraction of each tensor kept per vector, in (0, 1] [default: 0.2].")] = None,
    drop_rate: Annotated[Optional[float], typer.Option(help="dare: drop probability, in [0, 1) [default: 0.5].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="dare: seed of the drop masks [default: 0].")] = None,
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
    """Merge task vectors into one (NegMerge by default), streaming tensor by tensor."""
    from negmerge_cli.stages.merge import merge_vectors

    options = stream_options(device, dtype, max_memory, shard_size, force, quiet, missing_as_zero,
                             allow_nonfinite, no_hash)
    result = merge_vectors(inputs, output, method, base=base, weights=weight, options=options,
                         density=density, drop_rate=drop_rate, seed=seed)
    report(result, quiet, kept=True)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
