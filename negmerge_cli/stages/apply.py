"""``apply``: theta = base + scale * vector (scale < 0 unlearns)."""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch

from negmerge_cli.checkpoint.format import is_float
from negmerge_cli.checkpoint.provenance import provenance
from negmerge_cli.checkpoint.reader import Checkpoint
from negmerge_cli.errors import CheckpointError, UsageError
from negmerge_cli.stages.common import (
    StreamOptions,
    StreamResult,
    check_shapes,
    compute_dtype,
    open_inputs,
    require_float,
    stream_to_file,
)
from negmerge_cli.streaming import Source, TensorJob


def apply_vector(base: str | Path, vector: str | Path, scale: float, output: str | Path,
                 options: StreamOptions | None = None) -> StreamResult:
    """Write base + scale * vector. Tensors absent from the vector, and non-float tensors, are
    copied from the base unchanged; the output keeps the base's dtypes unless ``options.dtype``."""
    options = options or StreamOptions()
    if not math.isfinite(scale):
        raise UsageError(f"--scale {scale}: must be a finite number")
    with ExitStack() as stack:
        base_checkpoint, vector_checkpoint = open_inputs(stack, [base, vector], options)
        jobs = plan_apply(base_checkpoint, vector_checkpoint, options)

        def process(job: TensorJob, start: int, stop: int, slices: Iterator[torch.Tensor]) -> torch.Tensor:
            theta = next(slices)
            if job.compute_dtype is not None and len(job.sources) == 2:
                # scale * vector first, then add: exactly the documented formula, no fused rounding.
                theta.add_(next(slices).mul_(scale))
            return theta

        metadata = provenance("apply", kind="checkpoint", scale=scale)
        hashed = {"base": [base_checkpoint], "vector": [vector_checkpoint]}
        return stream_to_file(Path(output), jobs, process, metadata, hashed, options,
                              description="apply")


def plan_apply(base: Checkpoint, vector: Checkpoint, options: StreamOptions) -> list[TensorJob]:
    for name in vector.names:
        if name not in base:
            raise CheckpointError(f"{vector.path}: tensor '{name}' is not in the base {base.path}")
        require_float(name, vector, "task vectors hold floating-point tensors only")
    jobs = []
    for name in base.names:
        entry = base.entry(name)
        if not is_float(entry.dtype):
            jobs.append(TensorJob(name, entry.shape, entry.dtype, (Source(base, name),), compute_dtype=None))
            continue
        out_dtype = options.torch_dtype or entry.dtype
        if name not in vector:  # copied; converted only when another output dtype was asked for
            work = compute_dtype(entry.dtype) if out_dtype != entry.dtype else None
            jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name),), work))
            continue
        check_shapes(name, [base, vector])
        work = compute_dtype(entry.dtype, vector.entry(name).dtype)
        jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name), Source(vector, name)), work))
    return jobs
