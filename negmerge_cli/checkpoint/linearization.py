"""Linear (tangent) fine-tunes through the arithmetic: a linearized model only means something
around its expansion point theta0, so the mode and theta0 (file name and SHA-256) travel from the
checkpoints to the vectors, merges and unlearned models made of them, and the arithmetic refuses to
mix modes or expansion points, or to use a base that is not theta0."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.core.errors import CheckpointError

MODE, AROUND, AROUND_SHA = PREFIX + "finetuning_mode", PREFIX + "linearized_around", PREFIX + "linearized_around_sha256"
LINEAR = "linear"


def _describe(metadata: dict[str, str]) -> str:
    if metadata.get(MODE) != LINEAR:
        return "standard"
    return f"linear around {metadata.get(AROUND, '?')} (SHA-256 {metadata.get(AROUND_SHA, '?')[:16]}...)"


def shared(inputs: Sequence[tuple[object, Checkpoint]]) -> dict[str, str]:
    """The mode and expansion point every input shares, as metadata for what is made of them ({}
    for standard inputs); CheckpointError naming the first input that differs from the first."""
    first_path, first = inputs[0][0], inputs[0][1].metadata
    key = (first.get(MODE, "standard"), first.get(AROUND_SHA))
    for path, checkpoint in inputs[1:]:
        metadata = checkpoint.metadata
        if (metadata.get(MODE, "standard"), metadata.get(AROUND_SHA)) != key:
            raise CheckpointError(f"{path}: fine-tuned {_describe(metadata)}, but {first_path} {_describe(first)}; "
                                  "task vectors combine only within one mode and one expansion point")
    if key[0] != LINEAR:
        return {}
    return {MODE: LINEAR, AROUND: first.get(AROUND, ""), AROUND_SHA: key[1] or ""}


def check_base(base: object, linear: dict[str, str], role: str) -> dict[str, str]:
    """For linear inputs: ``base`` (a single file) must be their expansion point; the metadata to
    record, naming ``base`` as the expansion point."""
    if not linear:
        return {}
    path = Path(base)
    if not path.is_file():
        raise CheckpointError(f"{base}: the {role} of linear fine-tunes must be their expansion point, one file")
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if linear[AROUND_SHA] and digest != linear[AROUND_SHA]:
        raise CheckpointError(f"{base}: not the expansion point of these linear fine-tunes (SHA-256 {digest[:16]}..., "
                              f"they were linearized around {linear[AROUND]}, {linear[AROUND_SHA][:16]}...); "
                              f"give that file as the {role}")
    return {MODE: LINEAR, AROUND: path.name, AROUND_SHA: digest}
