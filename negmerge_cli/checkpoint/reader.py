"""Read-only access to checkpoints: one safetensors file, a sharded checkpoint, or a folder.

Tensors are read with ``pread`` into fresh buffers, whole or as flat element ranges, so callers can
stream a checkpoint of any size within a fixed memory budget. Each file also gives the SHA-256 of its
bytes, hashed whole apart from the reads (on background threads while a stream runs), unless the
digest cache already knows this version of the file (see :mod:`negmerge_cli.checkpoint.digests`).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Callable

import torch

from negmerge_cli.checkpoint import digests, hub_cache
from negmerge_cli.checkpoint.format import (
    DTYPES,
    MAX_HEADER_BYTES,
    Header,
    TensorEntry,
    parse_index,
    read_header,
)
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError

INDEX_SUFFIX = ".safetensors.index.json"


def open_regular(path: str | os.PathLike) -> int:
    """A checkpoint file opened by the file rules (:func:`files.open_regular`: regular files only,
    registered as an input); CheckpointError for anything else."""
    return files.open_regular(path, error=CheckpointError)


def _read_index_file(path: Path) -> bytes:
    """The bytes of an index file, which is metadata: capped like a safetensors header."""
    return files.read_bytes(path, error=CheckpointError, limit=MAX_HEADER_BYTES, what="an index")


class SafetensorsFile:
    """One open, validated safetensors file; ``digest=False`` skips the SHA-256.

    A digest the cache holds for this exact version of the file is used as is (no hashing at all),
    unless ``rehash``. Otherwise the file is hashed whole, apart from the reads of its tensors: on a
    background thread while a stream runs (:class:`~negmerge_cli.arithmetic.background.Hashers`),
    else when :meth:`sha256` is first asked; the digest is recorded in the cache."""

    def __init__(self, path: Path, digest: bool = True, rehash: bool = False):
        self.path = path
        self._fd = open_regular(path)
        try:
            self.header: Header = read_header(path, self._fd)
            self._identity = digests.Identity.of_fd(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self.digest = None if not digest or rehash else (hub_cache.blob_digest(path, self._fd)
                                                         or digests.lookup(self._identity))
        self._wanted = digest
        self._hashing = threading.Lock()  # one thread hashes; another asking waits for its digest

    @property
    def needs_hashing(self) -> bool:
        """Whether the digest is wanted and not known yet (from the cache or an earlier hashing)."""
        return self._wanted and self.digest is None

    def compute_digest(self, stop: threading.Event | None = None,
                       on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Hash the whole file now if its digest is wanted and unknown (``stop`` set: give up, and
        the digest stays unknown; ``on_bytes``: told each block hashed, for progress). Recorded in
        the cache only if the file did not change while it was hashed (then the digest is of no
        version at all, and the next run hashes it again)."""
        with self._hashing:
            if not self.needs_hashing:
                return
            digest = digests.hash_fd(self._fd, self._identity.size, stop, label=str(self.path), on_bytes=on_bytes)
            if digest is None:
                return
            if digests.Identity.of_fd(self._fd) == self._identity:
                digests.record(self._identity, digest)
            self.digest = digest

    def sha256(self) -> str:
        """The file's SHA-256 (hashing it now if no thread did), or "skipped" when disabled."""
        self.compute_digest()
        return self.digest or "skipped"

    def read_into(self, buffer: torch.Tensor, entry: TensorEntry, byte_start: int) -> None:
        """Fill a uint8 CPU ``buffer`` with the tensor's bytes starting at ``byte_start``."""
        view = memoryview(buffer.numpy()).cast("B")
        offset = entry.begin + byte_start
        done = 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], offset + done)
            if count == 0:
                raise CheckpointError(f"{self.path}: tensor '{entry.name}': file truncated while reading")
            done += count

    def close(self) -> None:
        os.close(self._fd)


class SafetensorsCheckpoint:
    """A set of tensors spread over one or more safetensors files, addressed by name (a
    :class:`~negmerge_cli.checkpoint.protocol.Checkpoint`)."""

    def __init__(self, path: Path, files: list[SafetensorsFile], metadata: dict[str, str]):
        self.path = path
        self.files = files
        self.metadata = metadata
        self._where: dict[str, tuple[SafetensorsFile, TensorEntry]] = {}
        for file in files:
            for name, entry in file.header.tensors.items():
                if name in self._where:
                    raise CheckpointError(f"{path}: tensor '{name}' appears in two shards")
                self._where[name] = (file, entry)

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def entry(self, name: str) -> TensorEntry:
        return self._where[name][1]

    def read(self, name: str, start: int = 0, stop: int | None = None, pin: bool = False) -> torch.Tensor:
        """Flat elements ``[start, stop)`` of a tensor, in its stored dtype, on the CPU (a fresh
        buffer: the caller may change it in place)."""
        file, entry = self._where[name]
        stop = entry.numel if stop is None else stop
        item = entry.nbytes // entry.numel if entry.numel else 1
        buffer = torch.empty((stop - start) * item, dtype=torch.uint8, pin_memory=pin)
        file.read_into(buffer, entry, start * item)
        return buffer.view(entry.dtype)

    def read_tensor(self, name: str) -> torch.Tensor:
        return self.read(name).reshape(self.entry(name).shape)

    def file_hashes(self) -> dict[str, str]:
        """SHA-256 of every file (hashing whatever was not read yet); "skipped" when disabled."""
        return {str(f.path): f.sha256() for f in self.files}

    @property
    def hashes_known(self) -> bool:
        """Whether :meth:`file_hashes` needs no hashing (cached digests, or hashing disabled)."""
        return not any(f.needs_hashing for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.header.file_size for f in self.files)

    def close(self) -> None:
        for file in self.files:
            file.close()

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_safetensors(path: Path, digest: bool = True, rehash: bool = False) -> SafetensorsCheckpoint:
    """Open a ``.safetensors`` file, a sharded checkpoint (index or folder), or a one-file folder.

    ``digest``: provide each file's SHA-256 (from the digest cache, or hashed while reading);
    ``rehash``: never trust the cache. Every file is opened by open_regular, which registers it as
    an input."""
    if path.is_dir():
        path = _resolve_folder(path)
    if path.name.endswith(INDEX_SUFFIX):
        return _open_sharded(path, digest, rehash)
    file = SafetensorsFile(path, digest, rehash)
    return SafetensorsCheckpoint(path, [file], file.header.metadata)



# What transformers' `from_pretrained(FOLDER)` loads from a local folder (transformers 4 and 5,
# modeling_utils._get_resolved_checkpoint_files, no `variant`): a distributed checkpoint if the
# folder holds such shards, else the file config.json's `transformers_weights` names, else the first
# of these that exists. (An adapter folder is an adapter first, there as here: lora.py.)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
MODEL_CONFIG = "config.json"
_DISTRIBUTED_SHARD = re.compile(r"^shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors$")


def _resolve_folder(folder: Path) -> Path:
    names = _listing(folder)
    configured = configured_weights(folder / MODEL_CONFIG) if MODEL_CONFIG in names else None
    chosen = folder_weights(folder, names, configured)
    if not chosen.endswith((".safetensors", INDEX_SUFFIX)):
        raise CheckpointError(f"{folder}: transformers loads {chosen} from this folder, a pickle this tool does not "
                              f"read (safetensors only); {PICKLE_ADVICE}")
    return folder / chosen


# what to do with weights saved as pickles (torch.save): said wherever one is found instead of safetensors
PICKLE_ADVICE = ("re-save the model with safetensors (transformers: model.save_pretrained(DIR, "
                 "safe_serialization=True)), or for a research CLIP .pt file run 'negmerge convert'")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def folder_weights(folder: Path, names: set[str], configured: str | None) -> str:
    """The weights file (or index) of a folder holding files ``names`` (``configured``: config.json's
    ``transformers_weights``): the one transformers loads, where its rule picks one; otherwise the
    folder's one index or its one safetensors file. A choice only an arbitrary rule could make is
    refused. Pure, so that output folders are checked by the same rule (model_folder.py)."""
    if any(_DISTRIBUTED_SHARD.match(name) for name in names):
        raise CheckpointError(f"{folder}: a distributed checkpoint (shard-*-model-*.safetensors), all of whose files "
                              "transformers reads as one; not supported: pass one file or index")
    transformers_choice = configured or next((name for name in TRANSFORMERS_WEIGHTS if name in names), None)
    if transformers_choice is not None:
        return transformers_choice
    indexes = sorted(name for name in names if name.endswith(INDEX_SUFFIX))
    files = sorted(name for name in names if name.endswith(".safetensors"))
    if len(indexes) == 1:
        twin = indexes[0].removesuffix(INDEX_SUFFIX) + ".safetensors"
        if twin in files:  # X.safetensors beside X.safetensors.index.json: which one is current?
            raise CheckpointError(f"{folder}: holds both {twin} and {indexes[0]}, and nothing says which is "
                                  "current; pass the file or the index itself")
        return indexes[0]
    if not indexes and len(files) == 1:
        return files[0]
    if not indexes and not files:
        pickles = sorted(name for name in names if name.lower().endswith(_PICKLE_SUFFIXES))
        if pickles:
            raise CheckpointError(f"{folder}: holds no safetensors weights, only {', '.join(pickles[:3])}"
                                  f"{' ...' if len(pickles) > 3 else ''} (pickles this tool does not read); "
                                  f"{PICKLE_ADVICE}")
        raise CheckpointError(f"{folder}: holds no weights (no .safetensors file or index); pass a model folder, "
                              "a .safetensors file or its index")
    found = f"{len(indexes)} index files" if indexes else f"{len(files)} safetensors files"
    raise CheckpointError(f"{folder}: expected one safetensors file or one index, found {found}; "
                          "pass the file or the index itself")


def configured_weights(config: Path) -> str | None:
    """The weights file a transformers ``config.json`` names (``transformers_weights``), if any."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.core.strict_json import show

    data = schemas.load(config, error=CheckpointError, what="a model config")
    value = data.get("transformers_weights") if isinstance(data, dict) else None  # not a transformers config
    if value is not None and not _is_weights_name(value):
        raise CheckpointError(f"{config}: field 'transformers_weights': expected the name of a .safetensors file or "
                              f"index in the folder, got {show(value)}")
    return value


def _is_weights_name(value: object) -> bool:
    """What transformers accepts as ``transformers_weights`` (its ``adapter_model.bin`` included),
    restricted to a plain name in the folder."""
    return (isinstance(value, str) and "/" not in value and "\0" not in value
            and (value.endswith((".safetensors", INDEX_SUFFIX)) or value == "adapter_model.bin"))


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError as exc:
        raise CheckpointError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _open_sharded(index_path: Path, digest: bool, rehash: bool) -> SafetensorsCheckpoint:
    """The index and its shards must agree exactly: every listed tensor in its shard, and no shard
    tensor the index does not list (refused rather than silently dropped or added)."""
    weight_map = parse_index(index_path, _read_index_file(index_path))
    shards: list[SafetensorsFile] = []
    try:
        for shard in dict.fromkeys(weight_map.values()):
            shards.append(SafetensorsFile(index_path.parent / shard, digest, rehash))
        checkpoint = SafetensorsCheckpoint(index_path, shards, shards[0].header.metadata)
        for name, shard in weight_map.items():
            if name not in checkpoint or checkpoint._where[name][0].path.name != shard:
                raise CheckpointError(f"{index_path}: tensor '{name}' is not in shard {shard}")
        for file in shards:
            unlisted = next((n for n in file.header.tensors if n not in weight_map), None)
            if unlisted is not None:
                raise CheckpointError(f"{file.path}: tensor '{unlisted}' is not listed in the index {index_path}")
        return checkpoint
    except BaseException:
        for file in shards:
            file.close()
        raise


__all__ = ["SafetensorsCheckpoint", "SafetensorsFile", "open_safetensors", "open_regular", "DTYPES"]
