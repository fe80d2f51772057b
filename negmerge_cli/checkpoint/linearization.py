"""Linear (tangent) fine-tunes through the arithmetic: a linearized model only means something
around its expansion point theta0, so the mode and theta0 (file name and SHA-256) travel from the
checkpoints to the vectors, merges and unlearned models made of them, and the arithmetic refuses to
mix modes or expansion points, or to use a base that is not theta0."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.core.errors import CheckpointError

MODE, AROUND, AROUND_SHA = PREFIX + "finetuning_mode", PREFIX + "linearized_around", PREFIX + "linearized_around_sha256"
LINEAR = "linear"


def metadata_of(path: str | Path) -> dict[str, str]:
    """A checkpoint's or vector's metadata, read from its header alone (nothing hashed)."""
    with open_checkpoint(path, digest=False) as checkpoint:
        return dict(checkpoint.metadata)


def is_linear(metadata: dict[str, str]) -> bool:
    return metadata.get(MODE) == LINEAR


def expansion_point(path: str | Path) -> dict[str, str]:
    """The metadata naming the one-file checkpoint ``path`` as the expansion point: its name and
    SHA-256 (from the digest cache when it knows this version of the file)."""
    with open_checkpoint(path) as checkpoint:
        digests = checkpoint.file_hashes()
    if len(digests) != 1:
        raise CheckpointError(f"{path}: an expansion point must be one file (this checkpoint has {len(digests)})")
    return {MODE: LINEAR, AROUND: Path(path).name, AROUND_SHA: next(iter(digests.values()))}


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
    found = expansion_point(base)
    if linear[AROUND_SHA] and found[AROUND_SHA] != linear[AROUND_SHA]:
        raise CheckpointError(f"{base}: not the expansion point of these linear fine-tunes (SHA-256 "
                              f"{found[AROUND_SHA][:16]}..., they were linearized around {linear[AROUND]}, "
                              f"{linear[AROUND_SHA][:16]}...); give that file as the {role}")
    return found
