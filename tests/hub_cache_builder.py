"""An offline Hugging Face hub cache in the cache's own layout, for tests that name checkpoints by
repo id: ``models--ORG--NAME/blobs/<etag>``, ``refs/<branch or tag>`` holding the commit, and
``snapshots/<commit>/<file>`` as relative symlinks into ``blobs/``. Weight files (LFS objects) are
stored under their SHA-256, small files under their git blob SHA-1, as the Hub's etags are."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path
from typing import Iterator

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def etag(path: Path) -> str:
    """The name the hub cache stores a file's blob under."""
    data = path.read_bytes()
    if path.name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_snapshot(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",),
                 blob_names: dict[str, str] | None = None) -> Path:
    """Store the top-level files of ``folder`` as commit ``commit`` of ``repo_id`` (``refs`` point at
    it); ``blob_names`` overrides a file's blob name (a cache entry whose name lies). The snapshot."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / commit
    (repository / "blobs").mkdir(parents=True, exist_ok=True)
    (repository / "refs").mkdir(exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = (blob_names or {}).get(path.name) or etag(path)
        blob = repository / "blobs" / name
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("../../blobs") / name)
    for ref in refs:
        (repository / "refs" / ref).write_text(commit)
    return snapshot


def commit_of(text: str) -> str:
    """A made-up 40-hex commit, stable per label."""
    return hashlib.sha1(text.encode()).hexdigest()


@contextlib.contextmanager
def offline_hub(cache: Path) -> Iterator[dict[str, str]]:
    """``huggingface_hub`` pointed at ``cache``, offline, with every socket connection refused (so a
    test fails rather than reaching the network). huggingface_hub reads its environment once, at
    import: the constants are set too, for this process; the environment, for subprocesses."""
    import huggingface_hub.constants as constants
    import pytest

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to reach the network: {args}")

    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield {**os.environ, **env}
