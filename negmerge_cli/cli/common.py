"""Helpers the streaming commands share: building options and reporting a result."""

from __future__ import annotations

from negmerge_cli.cli.console import stderr
from negmerge_cli.stages.common import StreamOptions, StreamResult


def stream_options(device: str, dtype: str | None, max_memory: str, shard_size: str | None,
                   force: bool, quiet: bool, missing_as_zero: bool = False,
                   allow_nonfinite: bool = False, no_hash: bool = False) -> StreamOptions:
    return StreamOptions(device=device, dtype=dtype, max_memory=max_memory, shard_size=shard_size,
                         force=force, missing_as_zero=missing_as_zero, allow_nonfinite=allow_nonfinite,
                         hash_inputs=not no_hash, progress=not quiet)


def report(result: StreamResult, quiet: bool, kept: bool = False) -> None:
    if quiet:
        return
    outputs = ", ".join(str(p) for p in result.outputs)
    kept_text = f", kept {result.kept_fraction:.2%} non-zero" if kept else ""
    stderr.print(
        f"wrote {outputs}: {result.tensors} tensors, {result.elements:,} float elements{kept_text} "
        f"({result.bytes_read / 1e9:.2f} GB read in {result.seconds:.1f} s)",
        highlight=False, soft_wrap=True,
    )
