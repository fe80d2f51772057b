"""The Hugging Face hub cache's layout, read without ``huggingface_hub``: which repository and commit
a snapshot path belongs to, and the SHA-256 a weight file's blob name already is.

The cache keeps ``models--ORG--NAME/blobs/<etag>`` and ``snapshots/<commit>/<file>`` as relative
symlinks to them; the etag of an LFS file (every weight file) is its SHA-256, so a file read through
a snapshot needs no hashing once the link is checked. Pure path logic (the resolver is :mod:`.hub`),
so that the reader and provenance can ask it without importing the resolver.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO_FOLDER = "models--"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"  # OpenCLIP's hub layout: what open_clip itself loads


@dataclass(frozen=True)
class ResolvedSource:
    """A checkpoint argument as the user named it (``text``) and the local ``path`` it stands for;
    for a Hub repo id, the repository, the revision asked (None: the default branch) and the commit
    the cache resolved it to. Path-like, so every reader opens ``path``; ``str()`` is ``text``, so
    messages and provenance name the input as given."""

    text: str
    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return self.text


def snapshot_of(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(ORG/NAME, commit)`` when ``path`` (a file or folder) lies in a hub-cache snapshot,
    ``models--ORG--NAME/snapshots/<commit>/...``; None otherwise. Read from the path as given
    (not resolved: a snapshot's files are links into ``blobs/``)."""
    parts = Path(os.path.abspath(path)).parts
    for index in range(len(parts) - 2, 0, -1):
        if parts[index] == "snapshots" and parts[index - 1].startswith(_REPO_FOLDER) and index + 1 < len(parts):
            return parts[index - 1].removeprefix(_REPO_FOLDER).replace("--", "/", 1), parts[index + 1]
    return None


def pinned_id(path: str | os.PathLike | None) -> str | None:
    """How results name a model read from the hub cache: ``ORG/NAME@COMMIT`` when ``path`` is what
    that id resolves to (a snapshot folder, or the OpenCLIP weights at its top), an id pinned to the
    very weights evaluated, which the tool reads back as they were; any other path as given."""
    found = snapshot_of(path) if path else None
    if found is None:
        return None if path is None else os.fspath(path)
    parts = Path(os.path.abspath(path)).parts
    folder = parts[:-1] if parts[-1] == OPEN_CLIP_WEIGHTS else parts
    is_snapshot = len(folder) >= 3 and folder[-2] == "snapshots" and folder[-3].startswith(_REPO_FOLDER)
    return f"{found[0]}@{found[1]}" if is_snapshot else os.fspath(path)


def origin(named: object, paths: list) -> dict[str, str]:
    """Where an input came from on the Hub, for provenance: ``repo_id``, ``revision`` (as asked, when
    named by id) and ``commit``; from the resolver when it named the input, else from a snapshot
    path in the cache; {} for anything else."""
    if isinstance(named, ResolvedSource) and named.repo_id:
        found = {"repo_id": named.repo_id, "revision": named.revision, "commit": named.commit}
        return {key: value for key, value in found.items() if value}
    snapshot = snapshot_of(paths[0]) if paths else None
    return {"repo_id": snapshot[0], "commit": snapshot[1]} if snapshot else {}


def blob_digest(path: str | os.PathLike, fd: int) -> str | None:
    """The SHA-256 of the open file ``fd`` (opened from ``path``) when ``path`` is a hub-cache
    snapshot file whose link leads to a blob named by a SHA-256 (an LFS object) in the same
    repository's ``blobs/``, and ``fd`` is that very blob; None otherwise (hash it as usual)."""
    if snapshot_of(path) is None:
        return None
    real = Path(os.path.realpath(path))
    repository = real.parent.parent
    if not (_SHA256.fullmatch(real.name) and real.parent.name == "blobs" and repository.name.startswith(_REPO_FOLDER)):
        return None
    snapshots = repository / "snapshots"
    if not Path(os.path.realpath(Path(path).parent)).is_relative_to(snapshots):
        return None  # a link from another repository's snapshot (or elsewhere) into these blobs
    try:
        blob, opened = os.stat(real), os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISREG(blob.st_mode) or (blob.st_dev, blob.st_ino) != (opened.st_dev, opened.st_ino):
        return None
    return real.name
