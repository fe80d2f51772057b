"""What the streaming commands print after a run."""

from __future__ import annotations

from negmerge_cli.core.output import output


def print_stream_result(result, kept: bool = False) -> None:
    """One summary line of a :class:`~negmerge_cli.stages.StreamResult` (quiet: nothing)."""
    outputs = ", ".join(str(p) for p in result.outputs)
    kept_text = f", kept {result.kept_fraction:.2%} non-zero" if kept else ""
    output().log(f"wrote {outputs}: {result.tensors} tensors, {result.elements:,} float elements{kept_text} "
                 f"({result.bytes_read / 1e9:.2f} GB read in {result.seconds:.1f} s)")
