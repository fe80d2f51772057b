"""A cache of whole-file SHA-256 digests, so each version of a file is hashed once.

The provenance metadata of every output lists the SHA-256 of its inputs. Hashing is the costliest
part of a merge after reading (SHA-256 runs at about 1.8 GB/s per core), and the reproduction reads
every checkpoint many times, so a digest is remembered per file *version*: the file's identity is
(device, inode, size, modification time in ns), and any change to one of them makes the entry
miss. Files the tool writes are recorded as they are committed (the writer knows their bytes), so
the outputs of one stage are inputs to the next without being hashed again.

Trust model (docs/files.md): a change in place that keeps both the size and ``st_mtime_ns`` is
not seen (the clock restored with ``touch -d``, or a rewrite within the file system's timestamp
granularity right after the file was hashed); ``--rehash`` hashes afresh. The cache is only ever
used for the provenance digest, never for the tensors.

Layout: one small file per (device, inode) in :func:`cache_dir`, holding one line
``negmerge-sha256 v1 DEVICE INODE SIZE MTIME_NS DIGEST``, replaced atomically (write to a temporary
file, rename), so concurrent runs never see half an entry. Anything unreadable, malformed or
about another file version is a miss, never an error; failing to write an entry is silent too.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError, NegmergeError

ENV_VAR = "NEGMERGE_CACHE_DIR"
_MAGIC = "negmerge-sha256 v1"
_ENTRY = re.compile(r"negmerge-sha256 v1 (\d+) (\d+) (\d+) (-?\d+) ([0-9a-f]{64})\n")
_MAX_ENTRY_BYTES = 256


@dataclass(frozen=True)
class Identity:
    """What must stay the same for a file's recorded digest to be trusted."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> "Identity":
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    @classmethod
    def of_fd(cls, fd: int) -> "Identity":
        return cls.of(os.fstat(fd))

    @property
    def entry_name(self) -> str:
        return f"{self.device:x}-{self.inode:x}"

    def line(self, digest: str) -> str:
        return f"{_MAGIC} {self.device} {self.inode} {self.size} {self.mtime_ns} {digest}\n"


def cache_dir() -> Path | None:
    """``$NEGMERGE_CACHE_DIR/sha256``, else ``$XDG_CACHE_HOME/negmerge_cli/sha256``, else
    ``~/.cache/negmerge_cli/sha256`` (the demo's cache lives beside it); None without a home."""
    root = os.environ.get(ENV_VAR) or os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = Path.home() / ".cache"
        except RuntimeError:  # no $HOME and no passwd entry: no cache, every file is hashed
            return None
    return Path(root) / ("sha256" if os.environ.get(ENV_VAR) else "negmerge_cli/sha256")


def lookup(identity: Identity) -> str | None:
    """The recorded digest of exactly this file version, or None."""
    folder = cache_dir()
    return _read_entry(folder / identity.entry_name, identity) if folder else None


def record(identity: Identity, digest: str) -> None:
    """Remember ``digest`` for this file version (best effort: the cache is never a reason to fail)."""
    folder = cache_dir()
    if folder is None:
        return
    path = folder / identity.entry_name
    if _read_entry(path, identity) == digest:
        return  # already there (another run, or an earlier stage): no write
    try:
        with files.PendingFile(path, owned=True, sync=False, deferred=False) as pending:
            pending.write(identity.line(digest).encode("ascii"))
    except (NegmergeError, OSError):
        pass


def sha256_of_fd(fd: int) -> str:
    """SHA-256 of a whole open regular file, from the cache or hashed (with ``pread``, leaving the
    file position alone) and recorded if the file did not change meanwhile."""
    identity = Identity.of_fd(fd)
    known = lookup(identity)
    if known is not None:
        return known
    digest = hash_fd(fd, identity.size)
    if Identity.of_fd(fd) == identity:
        record(identity, digest)
    return digest


HASH_BLOCK = 1 << 20  # hashlib releases the GIL for it; larger blocks measured no faster


def hash_fd(fd: int, size: int, stop: threading.Event | None = None, label: str = "file",
            on_bytes: Callable[[int], None] = lambda n: None) -> str | None:
    """SHA-256 of the first ``size`` bytes of an open file; None if ``stop`` was set meanwhile
    (see :func:`hash_range`)."""
    sha = hashlib.sha256()
    return sha.hexdigest() if hash_range(sha, fd, 0, size, stop, label, on_bytes) else None


def hash_range(sha: "hashlib._Hash", fd: int, start: int, end: int, stop: threading.Event | None = None,
               label: str = "file", on_bytes: Callable[[int], None] = lambda n: None) -> bool:
    """Feed bytes ``[start, end)`` of an open file to ``sha``, read with ``pread`` into one reused
    buffer (no copy of the file is held; the file position is left alone), telling ``on_bytes``
    each block's size (progress); False if ``stop`` was set meanwhile. A file that ends before
    ``end`` (it shrank since it was opened) is an error naming ``label``."""
    buffer = memoryview(bytearray(max(1, min(HASH_BLOCK, end - start))))
    offset = start
    while offset < end:
        if stop is not None and stop.is_set():
            return False
        count = os.preadv(fd, [buffer[: min(len(buffer), end - offset)]], offset)
        if count == 0:
            raise CheckpointError(f"{label}: file shrank while being hashed (at byte {offset:,} of {end:,})")
        sha.update(buffer[:count])
        offset += count
        on_bytes(count)
    return True


def _read_entry(path: Path, identity: Identity) -> str | None:
    # Only regular files are opened (a FIFO or device planted in the cache would hang the read),
    # the read is capped, and anything that is not a well-formed line for this identity is a miss.
    # Not an input of the operation: the cache's own file, which this run may update.
    try:
        with open(files.open_regular(path, register=False), "rb") as handle:
            data = handle.read(_MAX_ENTRY_BYTES + 1)
    except (NegmergeError, OSError):
        return None
    match = _ENTRY.fullmatch(data.decode("ascii", errors="replace")) if len(data) <= _MAX_ENTRY_BYTES else None
    if match is None:
        return None
    device, inode, size, mtime_ns = (int(match.group(i)) for i in range(1, 5))
    if Identity(device, inode, size, mtime_ns) != identity:
        return None
    return match.group(5)
