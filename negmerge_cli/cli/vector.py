"""negmerge vector: task vectors tau = FINETUNED - BASE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import print_stream_result


@opt.with_options(opt.SELECTION, opt.STREAMING_TO_FILE, opt.QUIET)
def vector(
    finetuned: Annotated[list[str], typer.Argument(help="Fine-tuned checkpoint(s): file, index, folder, or Hub repo id ORG/NAME[@REVISION].")],
    base: Annotated[str, typer.Option("--base", "-b", help="The checkpoint the fine-tunes started from (a path or Hub repo id).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (one input).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Output folder: one vector per input, named after it.")] = None,
    buffers: opt.Buffers = None,
    selection=None,
    stream=None,
) -> None:
    """Write the task vector FINETUNED - BASE (floating-point tensors only; all-zero ones are left
    out and listed in the metadata unless --keep-zero; BatchNorm running statistics are left out
    unless --buffers include)."""
    from negmerge_cli.stages import write_vectors

    for result in write_vectors(base, finetuned, output=output, out_dir=out_dir, options=stream, selection=selection,
                                buffers=buffers):
        print_stream_result(result)


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("vector", short_help="Make task vectors: fine-tuned minus base weights.",
                epilog=epilog("vector"))(vector)
