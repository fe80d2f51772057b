"""Provenance metadata written into every output's ``__metadata__`` (string to string)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from negmerge_cli import __version__
from negmerge_cli.checkpoint.hub_cache import origin
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.core.strict_json import load_json

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
    """Tool version, command and parameters; values that are not strings are stored as JSON. Starting
    weights named by a Hub repo id arrive here as their snapshot's file: ``pretrained_hub`` says
    which repository and commit that is (the path alone would not outlive the cache)."""
    metadata = {"format": "pt", PREFIX + "version": __version__, PREFIX + "command": command}
    if isinstance(params.get("pretrained"), str):
        params["pretrained_hub"] = origin(None, [params["pretrained"]]) or None
    for key, value in params.items():
        if value is not None:
            metadata[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return metadata


# apply: the vector's own provenance (its negmerge.* entries), so the chain from the fine-tunes to
# the unlearned model reads from the output; minus what only describes the vector's tensors
VECTOR_PROVENANCE = PREFIX + "vector_provenance"
HUB_KEYS = ("repo_id", "revision", "commit")  # an input's origin on the Hugging Face Hub
_NOT_CARRIED = {PREFIX + "zero_tensors", PREFIX + "kind", *ARCHITECTURE_KEYS}


def describe_inputs(paths: list[Path], hashes: list[str] | None = None) -> str:
    """JSON list of ``{"file", "sha256"}`` for the given files (placeholders when not yet known), with
    ``repo_id`` and ``commit`` for a file in a Hugging Face hub-cache snapshot."""
    hashes = hashes or [HASH_PLACEHOLDER] * len(paths)
    return json.dumps([{"file": Path(p).name, "sha256": h, **origin(None, [p])} for p, h in zip(paths, hashes)])


def describe_named_inputs(inputs: list[tuple[str | os.PathLike, list[Path], list[str] | None]]) -> str:
    """JSON list with one entry per input as the user named it (a file, a folder, an index, a Hub id):
    ``{"input": as named, "path": resolved, "files": [{"file", "sha256"}, ...]}``, one file per shard
    (placeholder digests when not yet known); an input from the Hugging Face Hub also has
    ``repo_id``, ``revision`` (as asked, if any) and ``commit`` (:func:`hub_cache.origin`)."""
    entries = []
    for named, paths, hashes in inputs:
        hashes = hashes or [HASH_PLACEHOLDER] * len(paths)
        entries.append({"input": str(named), "path": str(Path(named).expanduser().resolve()),
                        **origin(named, paths),
                        "files": sorted(({"file": Path(p).name, "sha256": h} for p, h in zip(paths, hashes)),
                                        key=lambda file: file["file"])})
    return json.dumps(entries)


def read_inputs(value: str | None) -> list[dict]:
    """The inputs a ``negmerge.<role>`` entry lists, each as ``{"input", "path", "files"}`` (and the
    ``HUB_KEYS`` recorded for a Hub input): the
    format above, or the older flat list of ``{"file", "sha256"}`` (one input per file, as recorded).
    Anything else (convert's ``--pretrained`` tag, damaged JSON) lists none."""
    try:
        listed = load_json(value.encode(), "inputs", NegmergeError) if value else []
    except NegmergeError:
        return []
    inputs = []
    for item in listed if isinstance(listed, list) else []:
        if not isinstance(item, dict):
            continue
        hub = {key: str(item[key]) for key in HUB_KEYS if item.get(key)}
        if isinstance(item.get("files"), list):
            files = [{"file": str(f.get("file", "?")), "sha256": str(f.get("sha256", "?"))}
                     for f in item["files"] if isinstance(f, dict)]
            inputs.append({"input": str(item.get("input", "?")), "path": item.get("path"), "files": files, **hub})
        else:
            name = str(item.get("file", "?"))
            inputs.append({"input": name, "path": None, "files": [{"file": name, "sha256": str(item.get("sha256", "?"))}],
                           **hub})
    return inputs


def vector_provenance(metadata: dict[str, str]) -> str | None:
    """``apply``: what a vector's metadata says of how it was made (JSON), or None if nothing."""
    carried = {key: value for key, value in metadata.items() if key.startswith(PREFIX) and key not in _NOT_CARRIED}
    return json.dumps(carried, sort_keys=True) if PREFIX + "command" in carried else None
