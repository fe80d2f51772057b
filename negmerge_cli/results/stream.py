"""What a streamed stage (vector, merge, apply) wrote: its files, counts and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StreamResult:
    outputs: list[Path]
    tensors: int
    elements: int
    nonzero: int
    bytes_read: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)  # the outputs' provenance, input digests included

    @property
    def kept_fraction(self) -> float:
        return self.nonzero / self.elements if self.elements else 0.0
