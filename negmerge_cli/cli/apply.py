"""negmerge apply: theta = BASE + SCALE * VECTOR."""

from __future__ import annotations

from typing import Annotated

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import print_stream_result


@opt.with_options(opt.STREAMING.only("device", "dtype", "max_memory", "shard_size", "allow_nonfinite", "no_hash",
                                     "rehash", "no_copy_files", "no_model_card", "force"),
                  opt.SELECTION, opt.QUIET)
def apply(
    base: Annotated[str, typer.Option("--base", "-b", help="The checkpoint to modify: file, index, folder or Hub repo id ORG/NAME[@REVISION].")],
    vector: Annotated[str, typer.Option("--vector", "-v", help="Task vector to add (a path or Hub repo id).")],
    scale: Annotated[float, typer.Option("--scale", "-s", help="Coefficient; negative to unlearn (e.g. -0.9).")],
    output: opt.OutputTarget,
    selection=None,
    stream=None,
) -> None:
    """Write BASE + SCALE * VECTOR over the selected tensors; every other tensor (not selected, not in
    the vector, or not floating-point) is copied from BASE. With -o DIR/ the output is a complete
    model folder: weights in BASE's layout, BASE's other files, a model card."""
    from negmerge_cli.stages import apply_vector

    print_stream_result(apply_vector(base, vector, scale, output, stream, selection))


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("apply", short_help="Add a scaled task vector to a model (negative to unlearn).",
                epilog=epilog("apply"))(apply)
