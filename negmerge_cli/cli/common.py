"""What the streaming commands print after a run."""

from __future__ import annotations

from negmerge_cli.core.output import output


def print_stream_result(result, nonzero: bool = False) -> None:
    """One summary line of a :class:`~negmerge_cli.stages.StreamResult` (quiet: nothing); with
    ``nonzero``, its non-zero fraction in ``inspect``'s words (of every float element, the tensors
    left out as all-zero included)."""
    outputs = ", ".join(str(p) for p in result.outputs)
    omitted = result.float_elements - result.elements
    elements = f"{result.elements:,} float elements" + (f" (+{omitted:,} in all-zero tensors left out)" if omitted else "")
    nonzero_text = f"; non-zero {result.nonzero_fraction:.2%} of float elements" if nonzero else ""
    output().log(f"wrote {outputs}: {result.tensors} tensors, {elements}{nonzero_text} "
                 f"({result.bytes_read / 1e9:.2f} GB read in {result.seconds:.1f} s)")
