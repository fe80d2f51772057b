"""The safetensors file format: dtype codes, and strict parsers for headers and sharded indexes.

Layout: 8-byte little-endian header length N, N bytes of JSON (maybe padded with spaces), then the
tensor bytes. Every tensor entry has a dtype, a shape and [begin, end) offsets into the data
section; the spec requires the entries to tile the data section exactly, with no holes.

We parse headers ourselves (rather than through ``safe_open``) for two reasons: to report hostile or
damaged files as one-line errors naming the file and tensor, and to read arbitrary byte ranges with
``pread`` into our own buffers, so streaming never memory-maps whole files (mapped pages count as
resident memory and would defeat the memory budget).

Both parsers take their JSON from :func:`negmerge_cli.core.strict_json.load_json` and then validate every field, so
whatever a hostile file holds ends as one CheckpointError naming the file (and the tensor).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch

from negmerge_cli.core.errors import CheckpointError
from negmerge_cli.core.strict_json import load_json, show

# Code in the file <-> torch dtype. Order matters only for readability.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "C64": torch.complex64,
}
DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

# Same cap as the reference implementation: a header is metadata, never gigabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"
MAX_ELEMENTS = 2**63 - 1  # torch sizes are int64
FLOAT8 = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def is_float(dtype: torch.dtype) -> bool:
    """Floating-point tensors take part in task vectors; integer and bool tensors never do."""
    return dtype.is_floating_point


def promote_types(first: torch.dtype, second: torch.dtype) -> torch.dtype:
    """``torch.promote_types``, extended to fp8, which torch refuses to promote: fp8 widens to the
    other float type (each holds every fp8 value), and the two fp8 formats together to float16."""
    if first == second:
        return first
    if first in FLOAT8 and second in FLOAT8:
        return torch.float16
    if first in FLOAT8 or second in FLOAT8:
        return second if first in FLOAT8 else first
    return torch.promote_types(first, second)


def count_nonzero(tensor: torch.Tensor) -> int:
    """``torch.count_nonzero``, extended to fp8 (no kernel): zero is all bits clear but the sign."""
    if tensor.dtype in FLOAT8:
        return int(torch.count_nonzero(tensor.view(torch.uint8) & 0x7F))
    return int(torch.count_nonzero(tensor))


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in one file. Offsets are absolute file positions."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def dtype_code(self) -> str:
        return DTYPE_CODES[self.dtype]


@dataclass(frozen=True)
class Header:
    path: Path
    size: int  # header bytes including the 8-byte length prefix; data starts here
    tensors: dict[str, TensorEntry]  # in file (offset) order
    metadata: dict[str, str]
    file_size: int


def read_header(path: Path, fd: int) -> Header:
    """Parse and validate the header of an open safetensors file; CheckpointError when damaged."""
    file_size = os.fstat(fd).st_size
    if file_size < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {file_size} bytes)")
    head = os.pread(fd, 8, 0)
    (length,) = struct.unpack("<Q", head)
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: not a safetensors file ({_what_it_looks_like(head, length)}); pass a "
                              ".safetensors file, a sharded checkpoint's .safetensors.index.json, or a model folder")
    if 8 + length > file_size:
        raise CheckpointError(
            f"{path}: truncated or not a safetensors file (header claims {length} bytes, file has {file_size})"
        )
    parsed = load_json(os.pread(fd, length, 8), f"{path}: header")
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = _parse_metadata(path, parsed.pop(METADATA_KEY, None))
    header_size = 8 + length
    entries = [_parse_entry(path, name, spec, header_size) for name, spec in parsed.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_tiling(path, entries, header_size, file_size)
    return Header(path, header_size, {e.name: e for e in entries}, metadata, file_size)


def _what_it_looks_like(head: bytes, length: int) -> str:
    """What a file whose first 8 bytes are ``head`` seems to be, when they are no safetensors header
    length (a safetensors file starts with a small little-endian length, then ``{``)."""
    start = head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
    if start in (b"{", b"["):
        return "it starts like a JSON file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, as torch.save writes: re-save it with safetensors, or convert a CLIP with 'negmerge convert'"
    if head[:1] == b"\x80":
        return "a pickle, as torch.save writes: re-save it with safetensors, or convert a CLIP with 'negmerge convert'"
    return f"header claims {length} bytes, more than any safetensors header"


def parse_index(path: Path, raw: bytes) -> dict[str, str]:
    """Validate a sharded checkpoint's index (``*.safetensors.index.json``); return its weight map,
    tensor name -> shard file name (in the index's folder)."""
    index = load_json(raw, f"{path}: index")
    if not isinstance(index, dict):
        raise CheckpointError(f"{path}: index is not a JSON object")
    if not isinstance(index.get("metadata", {}), dict):
        raise CheckpointError(f"{path}: index 'metadata' is not a JSON object")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: index has no valid 'weight_map'")
    if not weight_map:
        raise CheckpointError(f"{path}: index 'weight_map' lists no tensors")
    for name, shard in weight_map.items():
        if not (isinstance(shard, str) and _is_file_name(shard)):
            raise CheckpointError(f"{path}: tensor '{name}': shard {show(shard)} is not a plain file name")
    return weight_map


def _parse_metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    return metadata


def _parse_entry(path: Path, name: str, spec: object, header_size: int) -> TensorEntry:
    where = f"{path}: tensor '{name}'"
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: entry is not a JSON object")
    code = spec.get("dtype")
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported dtype {show(code)}")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    numel = shape_numel(shape)
    if numel is None:
        raise CheckpointError(f"{where}: invalid shape {show(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise CheckpointError(f"{where}: invalid data_offsets {show(offsets)}")
    begin, end = offsets
    if end < begin or end - begin != numel * itemsize(dtype):
        raise CheckpointError(f"{where}: data_offsets {offsets} do not match {code} shape {show(shape)}")
    return TensorEntry(name, dtype, tuple(shape), header_size + begin, header_size + end)


def shape_numel(shape: object) -> int | None:
    """Element count of a valid shape, or None. Valid: a list of non-negative integers whose
    non-zero product fits in int64 (so torch can hold the shape, even with a zero dimension)."""
    if not isinstance(shape, list):
        return None
    total = 1
    for dim in shape:  # capped as it goes: a hostile shape never builds a huge product
        if not _is_count(dim):
            return None
        total *= dim or 1
        if total > MAX_ELEMENTS:
            return None
    return 0 if 0 in shape else total


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_file_name(name: str) -> bool:
    # A shard is a file beside the index: no path separators, no NUL or other control characters.
    return name.isprintable() and name not in ("", ".", "..") and not {"/", "\\"} & set(name)


def _check_tiling(path: Path, entries: list[TensorEntry], data_start: int, file_size: int) -> None:
    position = data_start
    for entry in entries:
        if entry.begin != position:
            kind = "overlaps another tensor" if entry.begin < position else "leaves a gap before it"
            raise CheckpointError(f"{path}: tensor '{entry.name}': inconsistent offsets ({kind})")
        position = entry.end
    if position > file_size:
        raise CheckpointError(
            f"{path}: truncated file ({file_size} bytes, header needs {position})"
        )
    if position < file_size:
        raise CheckpointError(
            f"{path}: {file_size - position} unexpected bytes after the last tensor"
        )
