"""The file rules: every file the tool writes goes through here, and every user file it reads.

Reading (:func:`open_regular`, :func:`read_bytes`, :func:`read_text`): only regular files (or
symlinks to them) are opened, never a FIFO, socket or device (opening a FIFO waits for a writer,
reading a device may never end); every file read is registered as an input of the operation.

Writing (checkpoints, JSON, plots, manifests), guarantees for every output:

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
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from negmerge_cli.core.errors import NegmergeError, OutputError, switch
from negmerge_cli.core.escape import json_text

_operation_inputs: list[set[tuple[int, int]]] = []  # one set per active operation (outermost first)
_input_trees: list[dict[tuple[int, int], tuple[str, ...]]] = []  # folder -> suffixes of its input files
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
    _input_trees.append({})
    try:
        yield
    finally:
        _operation_inputs.pop()
        _input_trees.pop()


def register_input(source: str | os.PathLike | int) -> None:
    """Record a file (path or open descriptor) read by the current operation."""
    if not _operation_inputs:
        return
    identity = _identity(source)
    if identity is not None:
        _operation_inputs[0].add(identity)


def register_input_tree(folder: str | os.PathLike, suffixes: tuple[str, ...]) -> None:
    """Record a folder read file by file (a dataset): no existing file below it whose name ends in
    one of ``suffixes`` (its images, split lists) may be replaced. Cheaper than registering each
    of a million images, and it holds for files read in worker processes too; an output folder
    inside the dataset (a sweep beside ``train/``) stays writable."""
    if _input_trees:
        identity = _identity(folder)
        if identity is not None:
            _input_trees[0][identity] = _input_trees[0].get(identity, ()) + tuple(s.lower() for s in suffixes)


def is_input(path: str | os.PathLike) -> bool:
    identity = _identity(path)
    if identity is None or not _operation_inputs:
        return False
    if identity in _operation_inputs[0]:
        return True
    real, trees = Path(path).resolve(), _input_trees[0]
    return bool(trees) and any(real.name.lower().endswith(trees.get(_identity(folder), ())) for folder in real.parents)


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


# -- reading: regular files only -----------------------------------------------------------------

_SPECIAL_KINDS = {
    stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
}
_OPEN_ERRORS = {errno.ENOENT: "no such file", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def open_regular(path: str | os.PathLike, *, error: type[NegmergeError] = NegmergeError,
                 register: bool = True) -> int:
    """A read-only descriptor of a regular file (or a symlink to one); ``error`` (the caller's
    class, e.g. CheckpointError) for anything else. Every read of a user's file starts here.

    The path is checked before opening (so no device is even opened), opened with O_NONBLOCK (in
    case it became a FIFO meanwhile) and checked again on the descriptor that will be read. The
    file becomes an input of the current operation unless ``register=False`` (the tool's own
    bookkeeping, which it reads and then replaces)."""
    path = Path(path)
    try:
        _check_regular(path, os.stat(path), error)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        reason = _OPEN_ERRORS.get(exc.errno, exc.strerror or str(exc))
        raise error(f"{path}: {reason}") from None
    try:
        _check_regular(path, os.fstat(fd), error)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    if register:
        register_input(fd)
    return fd


def read_bytes(path: str | os.PathLike, *, error: type[NegmergeError] = NegmergeError, limit: int | None = None,
               what: str = "this file", register: bool = True) -> bytes:
    """The bytes of a regular file; ``error`` if it is larger than ``limit`` (metadata and lists
    are small: a huge one is a mistake, not something to load into memory)."""
    with os.fdopen(open_regular(path, error=error, register=register), "rb") as handle:
        try:
            data = handle.read() if limit is None else handle.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if limit is not None and len(data) > limit:
        raise error(f"{path}: larger than {limit:,} bytes, the limit for {what}")
    return data


def read_text(path: str | os.PathLike, *, error: type[NegmergeError] = NegmergeError, limit: int | None = None,
              what: str = "this file", register: bool = True) -> str:
    """:func:`read_bytes` decoded as UTF-8; ``error`` if it is not UTF-8 text."""
    data = read_bytes(path, error=error, limit=limit, what=what, register=register)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not UTF-8 text") from None


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, error: type[NegmergeError] = OutputError) -> Iterator[None]:
    """An exclusive flock on ``path``, a regular file created (with its folder) if missing. Opened
    without blocking and without following a symlink, so a FIFO or link planted there is refused,
    not waited on. A lock file removed while this process waited for it (its holder undid the
    folder it had made) locks nothing: it is made and locked anew."""
    path = Path(path)
    while True:
        fd = _open_lock(path, error)
        try:
            _check_regular(path, os.fstat(fd), error)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_at(path, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path, error: type[NegmergeError]) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path.parent}: cannot make this folder ({exc.strerror or exc})") from None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        reason = "a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise error(f"{path}: cannot open the lock file ({reason}); remove it") from None


def _is_at(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _check_regular(path: Path, status: os.stat_result, error: type[NegmergeError]) -> None:
    if not stat.S_ISREG(status.st_mode):
        kind = _SPECIAL_KINDS.get(stat.S_IFMT(status.st_mode), "special file")
        raise error(f"{path}: not a regular file ({kind})")


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
        for pending in reversed(_deferred.pop()):  # newest first: folders an earlier file made are empty by then
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
        for pending in reversed(ready):
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
    """JSON with an indent; NaN and Infinity (not JSON) are refused, never written (escape.json_text)."""
    return write_text(path, json_text(data, path), force=force, owned=owned)


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
