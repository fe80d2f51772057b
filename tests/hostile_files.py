"""Builders of hostile inputs for test_hostile_inputs.py: real files on disk, safetensors headers
written byte by byte (8-byte little-endian length, JSON text, data), special files made with
os.mkfifo and socket.bind. Nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_raw(path: Path, header: str | bytes, data: bytes = b"\0" * 8) -> Path:
    """A safetensors file whose header is exactly ``header`` (valid or not)."""
    encoded = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def entry(dtype: str = '"F32"', shape: str = "[2]", offsets: str = "[0, 8]") -> str:
    """A tensor entry from raw JSON texts (so anything can go in: NaN, 5000-digit numbers...);
    the defaults describe 8 bytes of data."""
    return f'{{"dtype": {dtype}, "shape": {shape}, "data_offsets": {offsets}}}'


def sharded(folder: Path, index: str | dict, shards: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """A sharded checkpoint in ``folder``: the shard files (default: s1 holds 'a', s2 holds 'b') and
    an index with the given text (or JSON object)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = shards if shards is not None else {"s1.safetensors": {"a": torch.ones(2)},
                                                "s2.safetensors": {"b": torch.ones(3)}}
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name))
    path = folder / "model.safetensors.index.json"
    path.write_text(index if isinstance(index, str) else json.dumps(index))
    return path


def special_file(path: Path, kind: int = stat.S_IFIFO) -> Path:
    """A FIFO (or, with ``kind=stat.S_IFSOCK``, a socket) at ``path``; no privileges needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | kind)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Everything under ``root``: the SHA-256 of regular files, the target of symlinks, the type of
    anything else (special files are never opened, so a FIFO cannot block the test)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                found[str(path)] = "-> " + os.readlink(path)
            else:
                found[str(path)] = f"mode {stat.S_IFMT(mode):o}"
    return found
