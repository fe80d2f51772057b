"""What vector, merge and apply share: options, input checks, and one streamed output file."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from negmerge_cli.checkpoint.format import count_nonzero, is_float, promote_types
from negmerge_cli.checkpoint.provenance import PREFIX, describe_inputs
from negmerge_cli.checkpoint.reader import Checkpoint, open_checkpoint
from negmerge_cli.checkpoint.writer import OutputTensor, StreamingWriter
from negmerge_cli.errors import CheckpointError
from negmerge_cli.progress import byte_progress
from negmerge_cli.streaming import Engine, Process, TensorJob
from negmerge_cli.units import parse_dtype, parse_size, resolve_device


@dataclass
class StreamOptions:
    """Options common to the streaming stages (CLI: --device, --dtype, --max-memory, ...)."""

    device: str = "auto"
    dtype: str | None = None
    max_memory: str = "1GB"
    shard_size: str | None = None
    force: bool = False
    missing_as_zero: bool = False
    allow_nonfinite: bool = False
    hash_inputs: bool = True
    progress: bool = False

    def __post_init__(self) -> None:  # validate early: before any file is opened
        self.torch_device = resolve_device(self.device)
        self.torch_dtype = parse_dtype(self.dtype)
        self.budget = parse_size(self.max_memory, "--max-memory")
        self.shard_bytes = parse_size(self.shard_size, "--shard-size") if self.shard_size else None


@dataclass
class StreamResult:
    outputs: list[Path]
    tensors: int
    elements: int
    nonzero: int
    bytes_read: int
    seconds: float

    @property
    def kept_fraction(self) -> float:
        return self.nonzero / self.elements if self.elements else 0.0


def open_inputs(stack: ExitStack, paths: list, options: StreamOptions) -> list[Checkpoint]:
    return [stack.enter_context(open_checkpoint(p, options.hash_inputs)) for p in paths]


def files_of(checkpoints: list[Checkpoint]) -> list[Path]:
    """Every file behind the checkpoints (shards and index): outputs must not overwrite any."""
    return [f.path for c in checkpoints for f in c.files] + [c.path for c in checkpoints]


def output_dtype(requested: torch.dtype | None, *stored: torch.dtype) -> torch.dtype:
    if requested is not None:
        return requested
    result = stored[0]
    for dtype in stored[1:]:
        result = promote_types(result, dtype)
    return result


def compute_dtype(*stored: torch.dtype) -> torch.dtype:
    """Arithmetic in float32, or float64 when an input is float64 (never lose its precision)."""
    return torch.float64 if torch.float64 in stored else torch.float32


def check_shapes(name: str, checkpoints: list[Checkpoint]) -> None:
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if other.entry(name).shape != first.entry(name).shape:
            raise CheckpointError(
                f"{other.path}: tensor '{name}' has shape {list(other.entry(name).shape)}, "
                f"but {list(first.entry(name).shape)} in {first.path}"
            )


def require_float(name: str, checkpoint: Checkpoint, why: str) -> None:
    entry = checkpoint.entry(name)
    if not is_float(entry.dtype):
        raise CheckpointError(f"{checkpoint.path}: tensor '{name}' is {entry.dtype_code}; {why}")


def missing_error(name: str, missing_from: Checkpoint, present_in: Checkpoint, hint: bool) -> CheckpointError:
    tip = " (pass --missing-as-zero to treat it as zero)" if hint else ""
    return CheckpointError(f"{missing_from.path}: tensor '{name}' is missing (present in {present_in.path}){tip}")


def stream_to_file(
    output: Path,
    jobs: list[TensorJob],
    process: Process,
    metadata: dict[str, str],
    hashed_inputs: dict[str, list[Checkpoint]],
    options: StreamOptions,
    *,
    float_buffers: Callable[[TensorJob], int] = lambda job: 2,
    before_job: Callable[[TensorJob, Engine], None] = lambda job, engine: None,
    description: str = "streaming",
) -> StreamResult:
    """Compute ``jobs`` into ``output`` (atomically), recording input hashes in the metadata.

    ``hashed_inputs`` maps a metadata key (e.g. ``inputs``, ``base``) to the checkpoints it lists;
    their SHA-256 digests come for free from the reads and are written once streaming is done.
    """
    started = time.perf_counter()
    protected = files_of([c for group in hashed_inputs.values() for c in group])
    layout = [OutputTensor(j.name, j.out_dtype, j.shape) for j in jobs]
    for key, group in hashed_inputs.items():
        metadata[PREFIX + key] = describe_inputs(_file_paths(group))
    total_bytes = sum(j.read_bytes for j in jobs)
    counts = {"nonzero": 0, "elements": 0}

    with StreamingWriter(output, layout, metadata, shard_size=options.shard_bytes,
                         force=options.force, inputs=protected) as writer, \
            byte_progress(description, total_bytes, options.progress) as advance:
        engine = Engine(options.torch_device, options.budget, not options.allow_nonfinite, advance)

        def write(name: str, result: torch.Tensor) -> None:
            if result.dtype.is_floating_point:
                counts["nonzero"] += count_nonzero(result)
                counts["elements"] += result.numel()
            writer.write(name, result)

        engine.run(jobs, process, write, float_buffers, before_job)
        writer.update_metadata({
            PREFIX + key: describe_inputs(_file_paths(group), _file_hashes(group))
            for key, group in hashed_inputs.items()
        })
        outputs = writer.final_paths
    return StreamResult(outputs, len(jobs), counts["elements"], counts["nonzero"], total_bytes,
                        time.perf_counter() - started)


def _file_paths(group: list[Checkpoint]) -> list[Path]:
    return [f.path for c in group for f in c.files]


def _file_hashes(group: list[Checkpoint]) -> list[str]:
    return [h for c in group for h in c.file_hashes().values()]
