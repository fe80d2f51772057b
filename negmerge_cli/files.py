"""The one writer: every file the tool writes (checkpoints, JSON, plots, manifests) goes through here.

Guarantees, for every output:

- **Inputs are never overwritten.** Files read during an operation (one command, or one library
  stage call) are registered by identity (device, inode); an output that is one of them, also
  through a link, is refused. An existing file is refused unless ``force`` (or ``owned``: the tool's
  own bookkeeping, such as a sweep's manifest, which it replaces by design).
- **Atomic.** Bytes go to a hidden temporary file in the target folder, created with a random name
  and ``O_EXCL`` (a planted symlink cannot redirect the write), synced, and renamed into place only
  when complete. Any failure (full disk, Ctrl-C, a bug) removes the temporary file and the folders
  the write created; an existing file is untouched until the rename.
- **All or nothing.** Inside :func:`deferred_commits`, completed files wait and are renamed
  together at the end, so a command with several outputs (``vector --out-dir``) leaves none of them
  when one fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from negmerge_cli.errors import OutputError, switch

_operation_inputs: list[set[tuple[int, int]]] = []  # one set per active operation (outermost first)
_deferred: list[list["PendingFile"]] = []


# -- operations and their inputs ----------------------------------------------------------------


@contextlib.contextmanager
def operation() -> Iterator[None]:
    """Scope of one command or library call: the inputs it reads are protected from its outputs.

    Nested operations (the demo calling stages) share the outermost scope."""
    if _operation_inputs:
        yield
        return
    _operation_inputs.append(set())
    try:
        yield
    finally:
        _operation_inputs.pop()


def register_input(source: str | os.PathLike | int) -> None:
    """Record a file (path or open descriptor) read by the current operation."""
    if not _operation_inputs:
        return
    identity = _identity(source)
    if identity is not None:
        _operation_inputs[0].add(identity)


def is_input(path: str | os.PathLike) -> bool:
    identity = _identity(path)
    return identity is not None and bool(_operation_inputs) and identity in _operation_inputs[0]


def check_target(path: Path, *, force: bool = False, owned: bool = False) -> None:
    """Refuse an output path that is a folder, an input, or an existing file (without force)."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    if is_input(path):
        raise OutputError(f"{path}: output path is also an input; choose another output")
    if (path.exists() or path.is_symlink()) and not (force or owned):
        raise OutputError(f"{path}: exists; pass {switch('force')} to replace it")


def ensure_space(folder: Path, needed: int, target: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(f"{target}: not enough disk space ({needed / 2**20:.1f} MiB needed, "
                          f"{free / 2**20:.1f} MiB free)")


# -- one pending output file -------------------------------------------------------------------


class PendingFile:
    """A hidden temporary file beside ``path`` that becomes ``path`` on :meth:`commit`.

    Use as a context manager (commit on success, discard on any exception), or call
    :meth:`commit` / :meth:`discard` directly when several files belong together. ``sync=False``
    skips the fsyncs, for many small files whose set is marked complete by another file;
    ``deferred=False`` renames on commit even inside :func:`deferred_commits` (caches, not outputs).
    ``on_renamed(status)`` runs once the file is in place, with the ``os.stat_result`` of its
    final version (same inode, size and mtime as the committed temporary file)."""

    def __init__(self, path: str | os.PathLike, *, force: bool = False, owned: bool = False, sync: bool = True,
                 deferred: bool = True):
        self.path = Path(path)
        self._force, self._owned, self._sync, self._deferrable = force, owned, sync, deferred
        self.on_renamed: Callable[[os.stat_result], None] | None = None
        self._final_status: os.stat_result | None = None
        check_target(self.path, force=force, owned=owned)
        self._created = _make_folders(self.path.parent)
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            self._remove_created()
            raise _write_error(self.path, exc) from None
        self.temp = Path(temp)
        self.handle = os.fdopen(fd, "w+b")

    def write(self, data) -> None:
        self.guarded(self.handle.write, data)

    def guarded(self, operation, *args):
        """Run a write-side operation, turning disk errors into a one-line OutputError."""
        try:
            return operation(*args)
        except OSError as exc:
            raise _write_error(self.path, exc) from None

    def commit(self) -> Path:
        """Sync and rename into place (or queue the rename inside :func:`deferred_commits`)."""
        self.guarded(self.handle.flush)
        if self._sync:
            self.guarded(os.fsync, self.handle.fileno())
        self._final_status = os.fstat(self.handle.fileno())  # the last write's mtime; rename keeps it
        self.guarded(self.handle.close)
        os.chmod(self.temp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        if _deferred and self._deferrable:
            _deferred[-1].append(self)
        else:
            self._rename()
        return self.path

    def _rename(self) -> None:
        check_target(self.path, force=self._force, owned=self._owned)  # it may have appeared since
        os.replace(self.temp, self.path)
        self.temp = None
        if self._sync:
            _fsync_folder(self.path.parent)
        if self.on_renamed is not None:
            self.on_renamed(self._final_status)

    def discard(self) -> None:
        """Remove the temporary file and any folder this write created; never raises."""
        with contextlib.suppress(OSError):
            self.handle.close()
        if self.temp is not None:
            with contextlib.suppress(OSError):
                self.temp.unlink()
            self.temp = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty

    def __enter__(self) -> "PendingFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


@contextlib.contextmanager
def deferred_commits() -> Iterator[None]:
    """Files committed inside are renamed into place together at the end, or all discarded."""
    _deferred.append([])
    try:
        yield
    except BaseException:
        for pending in _deferred.pop():
            pending.discard()
        raise
    ready = _deferred.pop()
    try:
        for pending in ready:
            if _deferred:
                _deferred[-1].append(pending)
            else:
                pending._rename()
    except BaseException:
        for pending in ready:
            pending.discard()
        raise


# -- whole small files -------------------------------------------------------------------------


def write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = False, owned: bool = False) -> Path:
    with PendingFile(path, force=force, owned=owned) as pending:
        pending.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, force: bool = False, owned: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), force=force, owned=owned)


def write_json(path: str | os.PathLike, data, *, force: bool = False, owned: bool = False) -> Path:
    """JSON with an indent; NaN and Infinity (not JSON) are refused, never written."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise OutputError(f"{path}: a result is NaN or infinite; nothing was written") from None
    return write_text(path, text, force=force, owned=owned)


# -- helpers -----------------------------------------------------------------------------------


def _identity(source: str | os.PathLike | int) -> tuple[int, int] | None:
    try:
        stat = os.fstat(source) if isinstance(source, int) else os.stat(source)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return the ones created (outermost first)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise _write_error(created, exc) from None
    return list(reversed(missing))


def _write_error(path: Path, exc: OSError) -> OutputError:
    reason = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large"}.get(
        exc.errno, exc.strerror or str(exc))
    return OutputError(f"{path}: {reason} while writing; no output was written")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
