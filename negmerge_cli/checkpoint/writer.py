"""Streaming, atomic safetensors writer.

No official API writes safetensors incrementally, but the format only needs each tensor's name,
dtype and shape up front: we lay out the header first, then append tensor bytes as they are
computed. Everything goes to hidden temporary files in the target folder, which are renamed into
place only once complete and synced, so an interrupted run (Ctrl-C, crash, full disk) leaves no
partial output and never touches an existing file. The header keeps some slack so metadata that is
only known at the end (content hashes of the inputs) can be filled in before the rename.

Each file's SHA-256 is recorded in the digest cache when it is renamed into place, so the next
stage reading it need not hash it: computed from the bytes as they are written once the header is
final (from the start, or from when :meth:`StreamingWriter.settle_metadata` hands in the final
metadata, reading back once what was written before), else by reading the finished file back once
(page cache, output only). Writing to the disk is started as the bytes come, so the fsync before
the rename has little left to do.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch

from negmerge_cli.checkpoint import digests
from negmerge_cli.checkpoint.format import DTYPE_CODES, METADATA_KEY, itemsize
from negmerge_cli.checkpoint.reader import INDEX_SUFFIX
from negmerge_cli.core import files

_HEADER_SLACK = 4096  # room for metadata that grows after the header is written
_ALIGN = 8


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * itemsize(self.dtype)


@dataclass
class _Shard:
    path: Path  # final location
    tensors: list[OutputTensor]
    metadata: dict[str, str]
    file: "files.PendingFile | None" = None
    header_length: int = 0
    header: bytes = b""  # the header block as first written (padded)
    sha: "hashlib._Hash | None" = None  # of the bytes written so far, while the header stands
    size: int = 0  # bytes written so far, header included
    written_back: int = 0  # bytes whose write-back to the disk has been started

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def output_paths(path: Path, shard_count: int) -> list[Path]:
    """Shard file names for ``path`` (HF convention: stem-00001-of-00003.safetensors)."""
    if shard_count == 1:
        return [path]
    stem = path.name.removesuffix(".safetensors")
    return [path.with_name(f"{stem}-{i:05d}-of-{shard_count:05d}.safetensors") for i in range(1, shard_count + 1)]


def index_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + INDEX_SUFFIX)


class StreamingWriter:
    """Write tensors in a fixed order, chunk by chunk, into one file or several shards.

    Use as a context manager: on a clean exit the output is finalised and renamed into place; on any
    exception the temporary files are removed and the exception propagates.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tensors: list[OutputTensor],
        metadata: dict[str, str],
        *,
        shard_size: int | None = None,
        force: bool = False,
        record_digests: bool = True,
        metadata_final: bool = True,
    ):
        """``record_digests``: put each output file's SHA-256 in the digest cache; ``metadata_final``:
        whether ``metadata`` is complete (False: :meth:`update_metadata` will change it, so hashing
        the bytes as they are written would be wasted)."""
        self.path = Path(path)
        self._force = force
        self._record_digests = record_digests
        self._hash_as_written = record_digests and metadata_final
        self._shards = self._plan_shards(tensors, metadata, shard_size)
        self._index = index_path(self.path) if len(self._shards) > 1 else None
        self._check_targets(force)
        self._queue: list[tuple[_Shard, OutputTensor]] = [(s, t) for s in self._shards for t in s.tensors]
        self._pending_index: files.PendingFile | None = None
        self._settled: dict[str, str] | None = None  # final metadata handed in while writing
        self._cursor = 0
        self._written = 0  # bytes of the current tensor written so far
        self._advance()  # skip leading empty tensors: they take no bytes

    # -- planning -----------------------------------------------------------------------------
    def _plan_shards(
        self, tensors: list[OutputTensor], metadata: dict[str, str], shard_size: int | None
    ) -> list[_Shard]:
        groups: list[list[OutputTensor]] = [[]]
        size = 0
        for tensor in tensors:
            if shard_size and groups[-1] and size + tensor.nbytes > shard_size:
                groups.append([])
                size = 0
            groups[-1].append(tensor)
            size += tensor.nbytes
        paths = output_paths(self.path, len(groups))
        return [_Shard(p, g, dict(metadata)) for p, g in zip(paths, groups)]

    @property
    def final_paths(self) -> list[Path]:
        return [s.path for s in self._shards] + ([self._index] if self._index else [])

    def _check_targets(self, force: bool) -> None:
        for target in self.final_paths:
            files.check_target(target, force=force)
        folder = self.path.parent
        while not folder.exists():  # the space check looks at the nearest existing folder
            folder = folder.parent
        needed = sum(s.data_bytes + _aligned(len(_header_bytes(s.tensors, s.metadata)) + _HEADER_SLACK) + 8
                     for s in self._shards)
        files.ensure_space(folder, needed, self.path)

    # -- writing ------------------------------------------------------------------------------
    def __enter__(self) -> "StreamingWriter":
        try:
            for shard in self._shards:
                self._open_shard(shard)
        except BaseException:
            self._discard()
            raise
        return self

    def _open_shard(self, shard: _Shard) -> None:
        shard.file = files.PendingFile(shard.path, force=self._force)
        header = _header_bytes(shard.tensors, shard.metadata)
        shard.header_length = _aligned(len(header) + _HEADER_SLACK)
        shard.header = struct.pack("<Q", shard.header_length) + header.ljust(shard.header_length, b" ")
        shard.file.write(shard.header)
        shard.size = len(shard.header)
        if self._hash_as_written:
            shard.sha = hashlib.sha256(shard.header)

    def write(self, name: str, data: torch.Tensor) -> None:
        """Append the next elements of tensor ``name`` (any shape; flattened, in C order)."""
        if data.numel() == 0:  # empty tensors take no bytes and are skipped by the cursor
            return
        if self._settled is not None:
            self._hash_from_here(self._settled)
        shard, tensor = self._queue[self._cursor]
        if name != tensor.name or data.dtype != tensor.dtype:
            raise RuntimeError(f"writer expected {tensor.name} ({tensor.dtype}), got {name} ({data.dtype})")
        raw = data.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()
        if self._written + len(raw) > tensor.nbytes:
            raise RuntimeError(f"writer got too many bytes for {name}")
        shard.file.write(memoryview(raw))
        if shard.sha is not None:
            shard.sha.update(raw)
        shard.size += len(raw)
        if shard.size - shard.written_back >= _WRITE_BACK_STEP:
            _start_write_back(shard.file.handle.fileno(), shard.written_back, shard.size)
            shard.written_back = shard.size
        self._written += len(raw)
        self._advance()

    def _advance(self) -> None:
        while self._cursor < len(self._queue) and self._written == self._queue[self._cursor][1].nbytes:
            self._cursor += 1
            self._written = 0

    def settle_metadata(self, updates: dict[str, str]) -> None:
        """Hand in the final metadata while tensors are still being written (from any thread, e.g.
        once the inputs' digests are known): the next :meth:`write` puts it in the header and hashes
        each file from then on as it is written (reading back once what was written before), so
        the output's digest is not left to a read of the whole file at the end."""
        if self._record_digests:
            self._settled = dict(updates)

    def _hash_from_here(self, updates: dict[str, str]) -> None:
        self._settled = None
        for shard in self._shards:
            if shard.sha is not None:
                continue  # hashed as written already
            metadata = {**shard.metadata, **updates}
            header = _header_bytes(shard.tensors, metadata)
            if len(header) > shard.header_length:
                continue  # _finish reports it
            block = struct.pack("<Q", shard.header_length) + header.ljust(shard.header_length, b" ")
            fd = shard.file.handle.fileno()
            shard.file.guarded(shard.file.handle.flush)
            shard.file.guarded(os.pwrite, fd, block, 0)
            sha = hashlib.sha256(block)
            digests.hash_range(sha, fd, len(block), shard.size, label=str(shard.path))
            shard.metadata, shard.header, shard.sha = metadata, block, sha

    def update_metadata(self, updates: dict[str, str]) -> None:
        """Change metadata before finishing (e.g. hashes only known at the end).

        Metadata known before the writer opens (or settled while writing: :meth:`settle_metadata`)
        is cheaper: the digest of the output is then computed from the bytes as written; a header
        changed here makes the writer read the finished file back to hash it."""
        for shard in self._shards:
            shard.metadata.update(updates)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            if self._cursor != len(self._queue):
                missing = self._queue[self._cursor][1].name
                raise RuntimeError(f"writer closed before tensor {missing} was complete")
            self._finish()
        except BaseException:
            self._discard()
            raise

    def _finish(self) -> None:
        for shard in self._shards:
            header = _header_bytes(shard.tensors, shard.metadata)
            if len(header) > shard.header_length:
                raise RuntimeError("final metadata outgrew the header slack")
            final = struct.pack("<Q", shard.header_length) + header.ljust(shard.header_length, b" ")
            if final != shard.header:
                shard.file.guarded(shard.file.handle.seek, 8)
                shard.file.write(final[8:])
            if self._record_digests:
                self._record_digest_on_rename(shard, final)
        index = self._index_file() if self._index else None
        # shards first, the index last: a complete index means a complete sharded checkpoint
        with files.deferred_commits():
            for shard in self._shards:
                shard.file.commit()
            if index:
                index.commit()

    def _record_digest_on_rename(self, shard: _Shard, final_header: bytes) -> None:
        if shard.sha is not None and final_header == shard.header:
            digest = shard.sha.hexdigest()
        else:  # the running hash began with another header, or none did: hash the finished file once
            shard.file.guarded(shard.file.handle.flush)
            digest = digests.hash_fd(shard.file.handle.fileno(), shard.size, label=str(shard.path))
        shard.file.on_renamed = lambda status: digests.record(digests.Identity.of(status), digest)

    def _index_file(self) -> files.PendingFile:
        weight_map = {t.name: s.path.name for s in self._shards for t in s.tensors}
        total = sum(s.data_bytes for s in self._shards)
        metadata = {**self._shards[0].metadata, "total_size": total}
        index = files.PendingFile(self._index, force=self._force)
        self._pending_index = index
        index.write(json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=2).encode())
        return index

    def _discard(self) -> None:
        for shard in self._shards:
            if shard.file is not None:
                shard.file.discard()
        if self._pending_index is not None:
            self._pending_index.discard()


def save_state_dict(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    force: bool = False,
    *,
    shard_size: int | None = None,
) -> Path:
    """Atomically write a whole in-memory state dict (what ``safetensors.torch.save_file`` does,
    plus the temp-file-and-rename guarantee and provenance)."""
    layout = [OutputTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with StreamingWriter(path, layout, {"format": "pt", **(metadata or {})}, shard_size=shard_size, force=force) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    return Path(path)


def _header_bytes(tensors: list[OutputTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


_WRITE_BACK_STEP = 32 << 20


def _start_write_back(fd: int, start: int, stop: int) -> None:
    """Ask the kernel to start writing bytes ``[start, stop)`` to the disk now, without waiting.

    The fsync before the rename then finds little left to write (measured for 350 MB: 20 ms instead
    of 130 ms at the end of the run), the disk having written while the arithmetic ran.
    Linux only (``sync_file_range``); best effort: the fsync still makes the file durable."""
    libc = _libc()
    if libc is not None:
        libc.sync_file_range(fd, ctypes.c_int64(start), ctypes.c_int64(stop - start), _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc if hasattr(libc, "sync_file_range") else None
    except OSError:
        return None


def _aligned(length: int) -> int:
    return (length + _ALIGN - 1) // _ALIGN * _ALIGN
