"""What vector, merge and apply share: options, input checks, and one streamed output file."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from negmerge_cli.arithmetic.background import Hashers, WriteBehind, files_to_hash
from negmerge_cli.arithmetic.streaming import Engine, Process, TensorJob
from negmerge_cli.checkpoint import kinds
from negmerge_cli.checkpoint.format import count_nonzero
from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX, describe_named_inputs
from negmerge_cli.checkpoint.writer import OutputTensor, StreamingWriter
from negmerge_cli.core.errors import OutputError, UsageError, option, switch
from negmerge_cli.core.output import output
from negmerge_cli.core.units import parse_dtype, parse_size, resolve_device
from negmerge_cli.results.stream import StreamResult


@dataclass
class StreamOptions:
    """Options common to the streaming stages (CLI: --device, --dtype, --max-memory, ...)."""

    device: str = "auto"
    dtype: str | None = None
    max_memory: str = "1GB"
    shard_size: str | None = None
    force: bool = False
    missing_as_zero: bool = False
    keep_zero: bool = False  # vector, merge: also write tensors that are zero in every element
    allow_nonfinite: bool = False
    hash_inputs: bool = True
    rehash: bool = False  # hash every input afresh instead of trusting the digest cache
    copy_files: bool = True  # merge, apply into a folder: copy the base folder's other files
    model_card: bool = True  # merge, apply into a folder: write a README.md model card

    def __post_init__(self) -> None:  # validate early: before any file is opened
        if self.rehash and not self.hash_inputs:
            no_hash = switch("no_hash") if option("no_hash").startswith("--") else "hash_inputs=False"
            raise UsageError(f"{switch('rehash')} asks for fresh digests and {no_hash} for none; give one of them")
        self.torch_device = resolve_device(self.device)
        self.torch_dtype = parse_dtype(self.dtype)
        self.budget = parse_size(self.max_memory, option("max_memory"))
        self.shard_bytes = parse_size(self.shard_size, option("shard_size")) if self.shard_size else None




def open_inputs(stack: ExitStack, paths: list, options: StreamOptions, role: kinds.Role) -> list[Checkpoint]:
    """Open every input and check that its kind fits ``role`` (:mod:`negmerge_cli.checkpoint.kinds`),
    before any output is planned."""
    opened = []
    for path in paths:
        checkpoint = stack.enter_context(open_checkpoint(path, options.hash_inputs, options.rehash))
        kinds.require_kind(checkpoint, role)
        opened.append(checkpoint)
    return opened


def refuse_base_among(base: Checkpoint, inputs: list[Checkpoint], role: kinds.Role) -> None:
    """An input that is the base itself (the same file, or its tensors) makes an all-zero vector."""
    for checkpoint in inputs:
        kinds.refuse_same_input(base, "base", checkpoint, role)


def stream_to_file(
    target: Path,
    jobs: list[TensorJob],
    process: Process,
    metadata: dict[str, str],
    hashed_inputs: dict[str, list[tuple[str | Path, Checkpoint]]],
    options: StreamOptions,
    *,
    float_buffers: Callable[[TensorJob], int] = lambda job: 2,
    before_job: Callable[[TensorJob, Engine], None] = lambda job, engine: None,
    description: str = "streaming",
    sums_checked: bool = False,
    shard_bytes: int | None = ...,  # type: ignore[assignment]
) -> StreamResult:
    """Compute ``jobs`` into ``target`` (atomically), recording input hashes in the metadata.

    Results are checked before they are written: a NaN or Inf (from the arithmetic, or from an
    overflow when converting to the output dtype) fails the run unless ``allow_nonfinite``. Inputs
    are checked slice by slice as they arrive, unless ``sums_checked``: ``process`` then checks
    the running sum of each slice's sources instead (:func:`~negmerge_cli.arithmetic.streaming.check_sum`).

    ``hashed_inputs`` maps a metadata key (e.g. ``inputs``, ``base``) to the inputs it lists, each as
    the user named it (a file, a folder, an index) and its open checkpoint; their files' SHA-256 digests
    come from the digest cache, or are hashed on background threads while the stream runs and written
    once it is done. ``shard_bytes`` overrides ``options.shard_bytes``.
    """
    started = time.perf_counter()
    layout = [OutputTensor(j.name, j.out_dtype, j.shape) for j in jobs]
    known = all(c.hashes_known for group in hashed_inputs.values() for _, c in group)
    metadata.update(_input_metadata(hashed_inputs, with_hashes=known))
    total_bytes = sum(j.read_bytes for j in jobs)
    counts = {"nonzero": 0, "elements": 0}
    to_hash = files_to_hash([f for group in hashed_inputs.values() for _, c in group for f in c.files])
    hash_bytes = sum(f.header.file_size for f in to_hash)
    if to_hash:  # the bar counts the hashing too: a merge waits for it before it can finish
        description += f" + hashing {len(to_hash)} input file{'s' if len(to_hash) > 1 else ''}"

    shard_bytes = options.shard_bytes if shard_bytes is ... else shard_bytes
    with StreamingWriter(target, layout, metadata, shard_size=shard_bytes,
                         force=options.force, metadata_final=known) as writer, \
            output().progress(description, total_bytes + hash_bytes, unit="bytes") as advance, \
            Hashers(to_hash, lambda: writer.settle_metadata(_input_metadata(hashed_inputs, with_hashes=True)),
                    advance) as hashers, \
            WriteBehind(lambda name, result: _write(writer, name, result, target, options, counts)) as sink:
        engine = Engine(options.torch_device, options.budget, not (options.allow_nonfinite or sums_checked), advance)

        engine.run(jobs, process, sink.put, float_buffers, before_job)
        sink.finish()
        hashers.finish()  # the inputs' digests, hashed on every core while the stream ran
        metadata.update(_input_metadata(hashed_inputs, with_hashes=True))
        writer.update_metadata(metadata)
        outputs = writer.final_paths
    return StreamResult(outputs, len(jobs), counts["elements"], counts["nonzero"], total_bytes,
                        time.perf_counter() - started, metadata)


def _write(writer: StreamingWriter, name: str, result: torch.Tensor, target: Path, options: StreamOptions,
           counts: dict[str, int]) -> None:
    """Check, count and write one result slice (on the writer thread)."""
    if result.dtype.is_floating_point:
        if not options.allow_nonfinite:
            _check_result(result, name, target)
        counts["nonzero"] += count_nonzero(result)
        counts["elements"] += result.numel()
    writer.write(name, result)


def _input_metadata(hashed_inputs: dict[str, list[tuple[str | Path, Checkpoint]]],
                    with_hashes: bool) -> dict[str, str]:
    """The ``negmerge.<key>`` lists of inputs (as named, resolved) with their files' digests
    (placeholders until known)."""
    return {PREFIX + key: describe_named_inputs([
        (named, [f.path for f in checkpoint.files], list(checkpoint.file_hashes().values()) if with_hashes else None)
        for named, checkpoint in group]) for key, group in hashed_inputs.items()}


_CHECKED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # fp8 is copied as bytes


def _check_result(result: torch.Tensor, name: str, target: Path) -> None:
    # the sum first: one fast reduction; a non-finite sum is confirmed element-wise (it may overflow)
    if result.dtype in _CHECKED and result.numel() and not bool(torch.isfinite(result.sum())) \
            and not bool(torch.isfinite(result).all()):
        raise OutputError(
            f"{target}: tensor '{name}' would hold NaN or Inf (overflow of {str(result.dtype).removeprefix('torch.')}, "
            f"or non-finite weights or scale); nothing was written (pass {switch('allow_nonfinite')} to write it anyway)"
        )
