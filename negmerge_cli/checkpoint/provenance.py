"""Provenance metadata written into every output's ``__metadata__`` (string to string)."""

from __future__ import annotations

import json
from pathlib import Path

from negmerge_cli import __version__

PREFIX = "negmerge."
HASH_PLACEHOLDER = "0" * 64  # same length as a SHA-256 hex digest, filled in after streaming
# What rebuilding a checkpoint's model needs beyond its model name: written by every stage that
# builds a model, and carried from the base to any checkpoint derived from it (``apply``).
QUICK_GELU = PREFIX + "quick_gelu"  # "true" or "false"
# classifier checkpoints (classifier/models.py): family, torchvision/-cifar model name, class count
CLASSIFIER_KEYS = (PREFIX + "family", PREFIX + "model", PREFIX + "num_classes")
ARCHITECTURE_KEYS = (QUICK_GELU, *CLASSIFIER_KEYS)
# What a file is (negmerge_cli.checkpoint.kinds checks it against the role each input plays)
KIND = PREFIX + "kind"
CHECKPOINT, TASK_VECTOR = "checkpoint", "task_vector"


def architecture_of(metadata: dict[str, str]) -> dict[str, str]:
    """The architecture entries of a checkpoint's metadata, to carry into a checkpoint derived from it."""
    return {key: metadata[key] for key in ARCHITECTURE_KEYS if key in metadata}


def provenance(command: str, **params: object) -> dict[str, str]:
    """Tool version, command and parameters; values that are not strings are stored as JSON."""
    metadata = {"format": "pt", PREFIX + "version": __version__, PREFIX + "command": command}
    for key, value in params.items():
        if value is not None:
            metadata[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return metadata


def describe_inputs(paths: list[Path], hashes: list[str] | None = None) -> str:
    """JSON list of ``{"file", "sha256"}`` for the given inputs (placeholders when not yet known)."""
    hashes = hashes or [HASH_PLACEHOLDER] * len(paths)
    return json.dumps([{"file": Path(p).name, "sha256": h} for p, h in zip(paths, hashes)])
