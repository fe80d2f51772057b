"""Reading a ``torch.save`` file by hand: no untrusted file ever reaches ``torch.load`` or ``torch.jit``.

``torch.load`` hands a TorchScript archive to ``torch.jit.load``, which compiles and runs the code
it holds, and extracts a tar-format file to disk; so the container is read here, as
``torch.serialization`` writes it:

- zip (PyTorch >= 1.6): one folder ``ARCHIVE/`` holding ``data.pkl`` (the pickle), ``data/KEY``
  (each storage's raw bytes, stored uncompressed), ``byteorder``, ``version``... A TorchScript
  archive (``torch.jit.save``) is a zip too, told by its ``code/``, ``constants.pkl`` or
  ``bytecode.pkl`` members; it is refused before any member is read.
- legacy stream (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): pickles of a magic
  number, the protocol version, system information, the object and its storage keys, then each
  storage as an 8-byte little-endian element count and its bytes.
- tar (the format of the first PyTorch releases): refused, told by its header, never opened.

The object's pickle goes through :mod:`negmerge_cli.core.safe_pickle` with the checkpoint allow-list
(:mod:`.unpickle`); the storages it points at are built by our own ``persistent_load`` from the
bytes the file holds for them, after checking those against the declared dtype and element count:
nothing is read beyond what is declared, all storages together never take more memory than the
file's size, and a storage never grows (a tensor rebuilt beyond its storage's bytes is refused).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from negmerge_cli.convert import unpickle
from negmerge_cli.convert.unpickle import StorageKind
from negmerge_cli.core import safe_pickle
from negmerge_cli.core.errors import CheckpointError

WHAT = "PyTorch checkpoint"
RESAVE = "load it where you trust its author and save it again with torch.save (or as safetensors)"
ZIP_MAGIC = b"PK\x03\x04"  # torch.load's own test for the zip format: a local file header first
TAR_MAGIC = b"ustar"  # at offset 257 of a tar header
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
TORCHSCRIPT_MEMBERS = ("constants.pkl", "bytecode.pkl")  # plus code/...; torch.load tests constants.pkl


def read_torch_file(path: Path, handle) -> object:
    """The object the ``torch.save`` file ``handle`` (a regular file opened from ``path``) holds,
    with stand-ins for module classes; one-line errors naming ``path``."""
    size = os.fstat(handle.fileno()).st_size
    head = os.pread(handle.fileno(), 512, 0)
    with safe_pickle.failures_as(path, WHAT, CheckpointError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage's deprecation notice: the storages are torch.load's kind
        if head.startswith(ZIP_MAGIC):
            return _read_zip(path, handle, size)
        if head[257:262] == TAR_MAGIC:
            raise CheckpointError(f"{path}: refused: a tar-format PyTorch checkpoint (the format of the first PyTorch "
                                  f"releases), which is never unpacked here; {RESAVE}")
        if not head.startswith(b"\x80"):  # a pickle's PROTO opcode
            raise _problem(path, "neither a zip archive nor a torch.save pickle stream")
        return _read_legacy(path, handle, size)


def _problem(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable {WHAT}: {reason}")


def _shown(name: str) -> str:
    return name if len(name) <= 100 else name[:97] + "..."


# -- zip ---------------------------------------------------------------------------------------


def _read_zip(path: Path, handle, size: int) -> object:
    with zipfile.ZipFile(handle) as archive:  # a ZipFile given a handle leaves it open
        infos = archive.infolist()
        _refuse_torchscript(path, [info.filename for info in infos])
        prefix = _archive_folder(path, infos)
        members = {info.filename[len(prefix) + 1:]: info for info in infos}
        _check_byteorder(path, archive, members.get("byteorder"))
        if "data.pkl" not in members:
            raise _problem(path, f"the zip archive has no {prefix}/data.pkl (not a torch.save file)")
        pickled = io.BytesIO(archive.read(members["data.pkl"]))
        storages = _ZipStorages(path, archive, prefix, members, _Budget(path, size))
        return safe_pickle.load(pickled, unpickle.checkpoint_globals(), persistent_load=storages)


def _refuse_torchscript(path: Path, names: list[str]) -> None:
    for name in names:
        inner = name.partition("/")[2]
        if inner in TORCHSCRIPT_MEMBERS or inner.startswith("code/"):
            raise CheckpointError(
                f"{path}: refused: a TorchScript archive (torch.jit.save; it holds '{_shown(name)}'), whose code "
                "convert never runs (nothing was run); save the model's state_dict() with torch.save instead")


def _archive_folder(path: Path, infos: list[zipfile.ZipInfo]) -> str:
    """The one folder every member lies in; each member a plain relative name, once, stored."""
    names = [info.filename for info in infos]
    if not names:
        raise _problem(path, "an empty zip archive")
    seen: set[str] = set()
    prefix = names[0].partition("/")[0]
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if "\\" in name or len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
            raise _problem(path, f"zip member name '{_shown(name)}' is not a plain relative path inside one folder")
        if parts[0] != prefix:
            raise _problem(path, f"zip members lie in two folders ('{_shown(prefix)}/' and '{_shown(parts[0])}/')")
        if name in seen:
            raise _problem(path, f"zip member '{_shown(name)}' appears twice")
        seen.add(name)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise _problem(path, f"zip member '{_shown(name)}' is compressed or encrypted (torch.save stores "
                                 "every member as it is)")
    return prefix


def _check_byteorder(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> None:
    """Storages are in the writer's byte order, recorded since PyTorch 1.12 (little before)."""
    if info is None:
        return
    if info.file_size > 16:
        raise _problem(path, f"'{info.filename}' holds {info.file_size:,} bytes, not a byte order")
    order = archive.read(info)
    if order == b"big":
        raise CheckpointError(f"{path}: refused: its storages are big-endian (written on a big-endian machine); {RESAVE}")
    if order != b"little":
        raise _problem(path, f"'{info.filename}' says {order!r}, expected 'little' or 'big'")


class _ZipStorages:
    """``persistent_load`` of a zip checkpoint: the storage ``('storage', kind, KEY, location, numel)``
    from member ``ARCHIVE/data/KEY``, which must hold exactly ``numel`` elements of ``kind``."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, prefix: str, members: dict, budget: "_Budget"):
        self.path, self.archive, self.prefix, self.members, self.budget = path, archive, prefix, members, budget
        self.loaded: dict[str, tuple[torch.dtype, int, object]] = {}

    def __call__(self, pid: object) -> object:
        kind, key, numel = _storage_reference(self.path, pid, fields=5)
        if key in self.loaded:
            return _same_storage(self.path, self.loaded[key], kind, key, numel)
        nbytes = numel * kind.dtype.itemsize
        info = self.members.get(f"data/{key}")
        if info is None:
            raise _problem(self.path, f"storage '{_shown(key)}' has no member {self.prefix}/data/{_shown(key)}")
        if info.file_size != nbytes:
            dtype = str(kind.dtype).removeprefix("torch.")
            raise _problem(self.path, f"member '{info.filename}' holds {info.file_size:,} bytes, but its storage "
                                      f"declares {numel:,} {dtype} elements ({nbytes:,} bytes)")
        self.budget.take(nbytes)
        with self.archive.open(info) as member:
            storage = _typed(_read_exactly(self.path, member, nbytes, info.filename), kind.dtype)
        self.loaded[key] = (kind.dtype, numel, storage)
        return storage


# -- legacy stream -----------------------------------------------------------------------------


def _read_legacy(path: Path, handle, size: int) -> object:
    handle.seek(0)
    magic, protocol, system = (safe_pickle.load(handle, safe_pickle.nothing) for _ in range(3))
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise _problem(path, "neither a zip archive nor a torch.save pickle stream")
    if protocol != LEGACY_PROTOCOL:
        raise _problem(path, f"legacy format protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    if not isinstance(system, dict) or system.get("little_endian") is not True:
        raise CheckpointError(f"{path}: refused: written on a big-endian machine (or its system record is "
                              f"malformed); {RESAVE}")
    storages = _LegacyStorages(path, _Budget(path, size))
    obj = safe_pickle.load(handle, unpickle.checkpoint_globals(), persistent_load=storages)
    storages.fill(handle, safe_pickle.load(handle, safe_pickle.nothing))
    return obj


class _LegacyStorages:
    """``persistent_load`` of a legacy stream: storages are declared by the object's pickle and
    their bytes follow it, in the order of the key list after it (:meth:`fill`)."""

    def __init__(self, path: Path, budget: "_Budget"):
        self.path, self.budget = path, budget
        self.declared: dict[str, tuple[torch.dtype, int, object]] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, pid: object) -> object:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            return pid[1]  # ('module', class, source file, source): the class, already allow-listed
        kind, key, numel = _storage_reference(self.path, pid, fields=6)
        if pid[5] is not None:
            raise CheckpointError(f"{self.path}: refused: storage views (a format of early PyTorch) are not read; {RESAVE}")
        if key in self.declared:
            return _same_storage(self.path, self.declared[key], kind, key, numel)
        nbytes = numel * kind.dtype.itemsize
        self.budget.take(nbytes)
        self.buffers[key] = _buffer(nbytes)  # filled by fill(), after the pickle
        storage = _typed(_storage(self.buffers[key]), kind.dtype)
        self.declared[key] = (kind.dtype, numel, storage)
        return storage

    def fill(self, handle, keys: object) -> None:
        if not isinstance(keys, list) or sorted(keys, key=str) != sorted(self.declared):
            raise _problem(self.path, "its list of storages does not match the storages its pickle declares")
        for key in keys:
            numel = self.declared[key][1]
            count = handle.read(8)
            if len(count) != 8 or int.from_bytes(count, "little", signed=True) != numel:
                raise _problem(self.path, f"storage '{_shown(key)}' does not start with its element count {numel:,} "
                                          "(truncated?)")
            _fill_exactly(self.path, handle, self.buffers[key], f"storage '{_shown(key)}'")


# -- storages ----------------------------------------------------------------------------------


class _Budget:
    """Storage bytes allocated so far, which can never exceed the file's size: each storage's bytes
    are in the file once (a zip directory that claims more is lying)."""

    def __init__(self, path: Path, file_size: int):
        self.path, self.left = path, file_size

    def take(self, nbytes: int) -> None:
        if nbytes > self.left:
            raise _problem(self.path, f"its storages declare more bytes than the file's own size (a storage of "
                                      f"{nbytes:,} bytes, with {self.left:,} left)")
        self.left -= nbytes


def _storage_reference(path: Path, pid: object, fields: int) -> tuple[StorageKind, str, int]:
    """(kind, key, numel) of a persistent id ``('storage', kind, key, location, numel, ...)``."""
    if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"):
        raise _problem(path, "its pickle refers to something other than a storage (a persistent id)")
    _, kind, key, location, numel = pid[:5]
    if not isinstance(kind, StorageKind) or not isinstance(key, str) or not isinstance(location, str) \
            or type(numel) is not int or numel < 0:
        raise _problem(path, "a malformed storage reference (expected a storage type, a key, a location and "
                             "an element count)")
    return kind, key, numel


def _same_storage(path: Path, loaded: tuple, kind: StorageKind, key: str, numel: int) -> object:
    """A storage named again (tensors sharing it) must be named the same way."""
    if loaded[:2] != (kind.dtype, numel):
        raise _problem(path, f"storage '{_shown(key)}' is declared twice, differently")
    return loaded[2]


def _typed(untyped, dtype: torch.dtype):
    """The storage kind the rebuild functions take (what torch.load gives them)."""
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _buffer(nbytes: int) -> np.ndarray:
    """Memory for a storage; torch.from_numpy makes its storage fixed-size, so a tensor the pickle
    rebuilds beyond its bytes is refused by torch, where it would grow a storage of its own."""
    return np.empty(nbytes, dtype=np.uint8)


def _storage(buffer: np.ndarray):
    return torch.from_numpy(buffer).untyped_storage()


def _read_exactly(path: Path, stream, nbytes: int, what: str):
    buffer = _buffer(nbytes)
    _fill_exactly(path, stream, buffer, what)
    return _storage(buffer)


def _fill_exactly(path: Path, stream, buffer: np.ndarray, what: str) -> None:
    view, done = memoryview(buffer), 0
    while done < len(view):
        got = stream.readinto(view[done:])
        if not got:
            raise _problem(path, f"{what} ends after {done:,} of its {len(view):,} bytes (truncated?)")
        done += got
