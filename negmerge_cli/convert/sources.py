"""Reading SOURCE: a safetensors checkpoint (file, sharded index or folder) or a ``torch.save`` file
(read by :mod:`.torch_file`, never by ``torch.load``), as a flat dict of named tensors plus the
SHA-256 of every file read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from negmerge_cli.checkpoint import digests, hub, kinds
from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.reader import INDEX_SUFFIX, open_regular
from negmerge_cli.convert import torch_file, unpickle
from negmerge_cli.core.errors import CheckpointError


@dataclass
class Source:
    path: Path
    tensors: dict[str, object]  # a pickled dict may hold other values; the layouts check them
    file_hashes: dict[Path, str]


def read_source(path: str | Path) -> Source:
    path = Path(hub.resolve(path))  # a Hub id (ORG/NAME[@REVISION]) becomes its cached snapshot folder
    if path.is_dir() or path.name.endswith((".safetensors", INDEX_SUFFIX)):
        with open_checkpoint(path) as checkpoint:
            kinds.require_kind(checkpoint, kinds.CONVERT_SOURCE)
            tensors = {name: checkpoint.read_tensor(name) for name in checkpoint.names}
            hashes = {Path(p): h for p, h in checkpoint.file_hashes().items()}
        return Source(path, tensors, hashes)
    with os.fdopen(open_regular(path), "rb") as handle:  # regular files only (a FIFO would hang); an input
        digest = digests.sha256_of_fd(handle.fileno())  # pread: the position stays at 0
        return Source(path, _pickled_tensors(path, handle), {path: digest})


def _pickled_tensors(path: Path, handle) -> dict[str, object]:
    obj = torch_file.read_torch_file(path, handle)
    if unpickle.is_module(obj):
        return unpickle.module_state_dict(obj, path)
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return dict(obj)
    kind = getattr(obj, "qualified_name", type(obj).__name__)
    raise CheckpointError(f"{path}: holds a {kind} object, not a module or a state dict")


def sha256_of(path: Path) -> str:
    """The file's SHA-256 (each version hashed once: see the digest cache)."""
    with os.fdopen(open_regular(path), "rb") as handle:
        return digests.sha256_of_fd(handle.fileno())

