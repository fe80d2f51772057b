"""What a streamed stage (vector, merge, apply) wrote: its files, counts and provenance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

ZERO_TENSORS_KEY = "negmerge.zero_tensors"  # negmerge_cli.checkpoint.zero_tensors (a layer above)
# The merge methods that set to zero elements the fine-tunes changed (sign conflicts, trimming, random
# drops): only their vectors have a "kept" fraction. sum, mean and magmax zero nothing an input changed.
DROPPING_METHODS = ("negmerge", "ties", "dare")


@dataclass
class StreamResult:
    outputs: list[Path]
    tensors: int
    elements: int  # float elements written (the tensors left out as all-zero are not written)
    nonzero: int
    bytes_read: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)  # the outputs' provenance, input digests included

    @property
    def float_elements(self) -> int:
        """Every float element of the result, the tensors it leaves out as all-zero included: the
        denominator ``inspect`` uses."""
        return self.elements + omitted_elements(self.metadata)

    @property
    def nonzero_fraction(self) -> float:
        """Non-zero elements out of all float elements (as ``inspect`` reports it)."""
        return self.nonzero / self.float_elements if self.float_elements else 0.0


def omitted_elements(metadata: dict[str, str]) -> int:
    """The elements of the tensors ``metadata`` lists as omitted zeros (written by this run)."""
    try:
        listed = json.loads(metadata.get(ZERO_TENSORS_KEY) or "{}")
        return sum(prod(spec["shape"]) for spec in listed.values())
    except (ValueError, TypeError, KeyError, AttributeError):
        return 0
