"""Plans for the tensor arithmetic: which output tensors, from which inputs, in which dtypes.

A plan is a list of :class:`~negmerge_cli.streaming.TensorJob`, checked against every input before
anything is read, so a mismatch fails before any output exists. Convention: when task vectors are
formed from fine-tuned checkpoints, a job's first source is the base (see :func:`task_vectors` and
:func:`vector_sources`, the only places that rely on it).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from negmerge_cli.checkpoint.format import is_float, promote_types
from negmerge_cli.checkpoint.reader import Checkpoint
from negmerge_cli.errors import CheckpointError, switch
from negmerge_cli.streaming import Source, TensorJob


# -- dtypes and checks -------------------------------------------------------------------------


def output_dtype(requested: torch.dtype | None, *stored: torch.dtype) -> torch.dtype:
    if requested is not None:
        return requested
    result = stored[0]
    for dtype in stored[1:]:
        result = promote_types(result, dtype)
    return result


def working_dtype(*stored: torch.dtype) -> torch.dtype:
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
    tip = f" (pass {switch('missing_as_zero')} to treat it as zero)" if hint else ""
    return CheckpointError(f"{missing_from.path}: tensor '{name}' is missing (present in {present_in.path}){tip}")


# -- task vectors and merges -------------------------------------------------------------------


def task_vectors(slices: Iterable[torch.Tensor], has_base: bool) -> Iterator[torch.Tensor]:
    """The slices of one chunk as task-vector slices: as they are, or minus the first (the base)."""
    slices = iter(slices)
    if not has_base:
        yield from slices
        return
    base = next(slices)
    for finetuned in slices:
        yield finetuned.sub_(base)


def vector_sources(job: TensorJob, index: int, has_base: bool) -> tuple[Source, ...]:
    """The sources that make task vector ``index`` of a merge job: (base, input) or (input,)."""
    return (job.sources[0], job.sources[1 + index]) if has_base else (job.sources[index],)


def plan_merge(sources: list[Checkpoint], base: Checkpoint | None, dtype: torch.dtype | None,
               missing_as_zero: bool) -> list[TensorJob]:
    """One job per tensor of the merged vector (or of ``vector``: one source and a base)."""
    if base is None:
        return _plan_vectors(sources, dtype, missing_as_zero)
    return _plan_with_base(sources, base, dtype, missing_as_zero)


def _plan_vectors(sources: list[Checkpoint], dtype: torch.dtype | None, missing_as_zero: bool) -> list[TensorJob]:
    names = list(dict.fromkeys(n for c in sources for n in c.names))
    jobs = []
    for name in names:
        present = _holding(name, sources, missing_as_zero)
        for checkpoint in present:
            require_float(name, checkpoint, "task vectors hold floating-point tensors only")
        check_shapes(name, present)
        stored = [c.entry(name).dtype for c in present]
        row = tuple(Source(c if name in c else None, name) for c in sources)
        jobs.append(TensorJob(name, present[0].entry(name).shape, output_dtype(dtype, *stored),
                              row, working_dtype(*stored)))
    return jobs


def _plan_with_base(sources: list[Checkpoint], base: Checkpoint, dtype: torch.dtype | None,
                    missing_as_zero: bool) -> list[TensorJob]:
    names = [n for n in base.names if is_float(base.entry(n).dtype)]
    for checkpoint in sources:  # a fine-tuned float tensor the base lacks has no task vector
        extra = [n for n in checkpoint.names if n not in base and is_float(checkpoint.entry(n).dtype)]
        if extra:
            raise missing_error(extra[0], base, checkpoint, hint=False)
    jobs = []
    for name in names:
        present = _holding(name, sources, missing_as_zero, reference=base)
        for checkpoint in present:
            require_float(name, checkpoint, "it is floating-point in the base")
        check_shapes(name, [base] + present)
        stored = [base.entry(name).dtype] + [c.entry(name).dtype for c in present]
        # A tensor missing from a fine-tuned checkpoint counts as unchanged: its tau is zero.
        row = (Source(base, name),) + tuple(Source(c if name in c else base, name) for c in sources)
        jobs.append(TensorJob(name, base.entry(name).shape, output_dtype(dtype, *stored),
                              row, working_dtype(*stored)))
    return jobs


def _holding(name: str, sources: list[Checkpoint], missing_as_zero: bool,
             reference: Checkpoint | None = None) -> list[Checkpoint]:
    """The inputs that hold tensor ``name``; one lacking it is an error unless missing-as-zero."""
    present = [c for c in sources if name in c]
    if len(present) < len(sources) and not missing_as_zero:
        absent = next(c for c in sources if name not in c)
        raise missing_error(name, absent, reference or present[0], hint=True)
    return present


# -- apply -------------------------------------------------------------------------------------


def plan_apply(base: Checkpoint, vector: Checkpoint, dtype: torch.dtype | None) -> list[TensorJob]:
    """Every tensor of the base: plus the vector's where it has one, else copied (converted only
    when another output dtype was asked for); non-float tensors copied as bytes."""
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
        out_dtype = dtype or entry.dtype
        if name not in vector:
            work = working_dtype(entry.dtype) if out_dtype != entry.dtype else None
            jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name),), work))
            continue
        check_shapes(name, [base, vector])
        work = working_dtype(entry.dtype, vector.entry(name).dtype)
        jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name), Source(vector, name)), work))
    return jobs
