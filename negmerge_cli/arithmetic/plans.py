"""Plans for the tensor arithmetic: which output tensors, from which inputs, in which dtypes.

A plan is a list of :class:`~negmerge_cli.arithmetic.streaming.TensorJob`, checked against every input before
anything is read, so a mismatch fails before any output exists. Convention: when task vectors are
formed from fine-tuned checkpoints, a job's first source is the base (see :func:`task_vectors` and
:func:`vector_sources`, the only places that rely on it).

Plans apply the tensor selection (``--include``/``--exclude``, :mod:`negmerge_cli.arithmetic.selection`) and
read the tensors a vector left out as zeros (``negmerge.zero_tensors``); :func:`split_zero_jobs`
decides, before anything is written, which results are zero in every element and can be left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import torch

from negmerge_cli.arithmetic.selection import EVERYTHING, TensorSelection
from negmerge_cli.arithmetic.streaming import Engine, Source, TensorJob
from negmerge_cli.checkpoint.format import is_float, promote_types
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.zero_tensors import ZeroTensor, read_zero_tensors
from negmerge_cli.core.errors import CheckpointError, switch
from negmerge_cli.core.output import output

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


class Held(NamedTuple):
    """Tensor ``name`` as one input holds it: stored, or listed as an omitted zero tensor."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


def stored(name: str, checkpoint: Checkpoint) -> Held:
    entry = checkpoint.entry(name)
    return Held(checkpoint.path, entry.dtype, entry.shape)


def listed(path: Path, zero: ZeroTensor) -> Held:
    return Held(path, zero.dtype, zero.shape)


def check_shapes(name: str, checkpoints: list[Checkpoint]) -> None:
    check_same_shape(name, [stored(name, c) for c in checkpoints])


def check_same_shape(name: str, held: list[Held]) -> None:
    first = held[0]
    for other in held[1:]:
        if other.shape != first.shape:
            raise CheckpointError(
                f"{other.path}: tensor '{name}' has shape {list(other.shape)}, but {list(first.shape)} in {first.path}"
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
               missing_as_zero: bool, selection: TensorSelection = EVERYTHING) -> list[TensorJob]:
    """One job per selected tensor of the merged vector (or of ``vector``: one source and a base)."""
    if base is None:
        return _plan_vectors(sources, dtype, missing_as_zero, selection)
    return _plan_with_base(sources, base, dtype, missing_as_zero, selection)


def _plan_vectors(sources: list[Checkpoint], dtype: torch.dtype | None, missing_as_zero: bool,
                  selection: TensorSelection) -> list[TensorJob]:
    zeros = [read_zero_tensors(c) for c in sources]
    everything = list(dict.fromkeys(n for c, z in zip(sources, zeros) for n in (*c.names, *z)))
    jobs = []
    for name in selection.pick(everything, everything, "tensor to merge"):
        held = _holding(name, sources, zeros, missing_as_zero)
        check_same_shape(name, held)
        dtypes = [h.dtype for h in held]
        # an omitted zero tensor reads as zeros, exactly like a missing one with --missing-as-zero
        row = tuple(Source(c if name in c else None, name) for c in sources)
        jobs.append(TensorJob(name, held[0].shape, output_dtype(dtype, *dtypes), row, working_dtype(*dtypes)))
    return jobs


def _holding(name: str, sources: list[Checkpoint], zeros: list[dict[str, ZeroTensor]],
             missing_as_zero: bool) -> list[Held]:
    """Tensor ``name`` as each input holding it holds it (stored or as a zero tensor); an input
    lacking it altogether is an error unless missing-as-zero."""
    held = []
    for checkpoint, zero in zip(sources, zeros):
        if name in checkpoint:
            require_float(name, checkpoint, "task vectors hold floating-point tensors only")
            held.append(stored(name, checkpoint))
        elif name in zero:
            held.append(listed(checkpoint.path, zero[name]))
    if len(held) < len(sources) and not missing_as_zero:
        absent = next(c for c, z in zip(sources, zeros) if name not in c and name not in z)
        present = next(c for c, z in zip(sources, zeros) if name in c or name in z)
        raise missing_error(name, absent, present, hint=True)
    return held


def _plan_with_base(sources: list[Checkpoint], base: Checkpoint, dtype: torch.dtype | None,
                    missing_as_zero: bool, selection: TensorSelection) -> list[TensorJob]:
    everything = list(dict.fromkeys(n for c in (base, *sources) for n in c.names))
    floats = [n for n in base.names if is_float(base.entry(n).dtype)]
    names = selection.pick(floats, everything, "floating-point tensor")
    for checkpoint in sources:  # a fine-tuned float tensor the base lacks has no task vector
        extra = [n for n in checkpoint.names
                 if n not in base and is_float(checkpoint.entry(n).dtype) and selection.matches(n)]
        if extra:
            raise missing_error(extra[0], base, checkpoint, hint=False)
    jobs = []
    for name in names:
        present = [c for c in sources if name in c]
        if len(present) < len(sources) and not missing_as_zero:
            raise missing_error(name, next(c for c in sources if name not in c), base, hint=True)
        for checkpoint in present:
            require_float(name, checkpoint, "it is floating-point in the base")
        check_shapes(name, [base] + present)
        stored_dtypes = [base.entry(name).dtype] + [c.entry(name).dtype for c in present]
        # A tensor missing from a fine-tuned checkpoint counts as unchanged: its tau is zero.
        row = (Source(base, name),) + tuple(Source(c if name in c else base, name) for c in sources)
        jobs.append(TensorJob(name, base.entry(name).shape, output_dtype(dtype, *stored_dtypes),
                              row, working_dtype(*stored_dtypes)))
    return jobs


# -- results that are zero in every element -----------------------------------------------------

PROBE_ELEMENTS = 4096  # a changed tensor almost always differs here: one small read decides it


def split_zero_jobs(jobs: list[TensorJob], has_base: bool, engine: Engine) -> tuple[list[TensorJob], list[ZeroTensor]]:
    """The jobs to write, and the results left out because they are zero in every element.

    A result is left out when every input's task vector is exactly zero there: then every merge
    method gives zero (and ``vector``'s result is that task vector). Deciding it needs the data, so
    this pass runs before the output's layout is fixed; it reads a changed tensor only until its
    first non-zero slice (a small probe first), and an unchanged one whole (the write pass then
    skips it). Zero means the difference computed as the write pass computes it, in the working
    dtype, is +0 or -0 in every element: for finite values, fine-tuned == base. A NaN or Inf
    difference is not zero, and empty tensors are kept (nothing to save).

    Left-out tensors are still part of their files' SHA-256 (each file is hashed whole).
    """
    kept, zeros = [], []
    with output().progress("finding all-zero tensors", sum(j.read_bytes for j in jobs), unit="bytes") as advance:
        for job in jobs:
            if job.numel and _all_taus_zero(job, has_base, engine):
                zeros.append(ZeroTensor(job.name, job.out_dtype, job.shape))
            else:
                kept.append(job)
            advance(job.read_bytes)
    return kept, zeros


def _all_taus_zero(job: TensorJob, has_base: bool, engine: Engine) -> bool:
    count = len(job.sources) - 1 if has_base else len(job.sources)
    return all(_tau_is_zero(job, vector_sources(job, i, has_base), has_base, engine) for i in range(count))


def _tau_is_zero(job: TensorJob, sources: tuple[Source, ...], has_base: bool, engine: Engine) -> bool:
    if has_base and sources[0] == sources[1]:
        return True  # missing from the fine-tune (missing-as-zero): the base itself
    if not has_base and sources[0].checkpoint is None:
        return True  # omitted zero tensor, or missing-as-zero
    step = engine.slice_elements(job, float_buffers=2)
    start, stop = 0, min(job.numel, PROBE_ELEMENTS)
    while start < job.numel:
        slices = (engine.prepare(job, s, engine.read(job, s, start, stop), count=False) for s in sources)
        if bool(next(task_vectors(slices, has_base)).any()):
            return False
        start, stop = stop, min(job.numel, stop + step)
    return True


# -- apply -------------------------------------------------------------------------------------


def plan_apply(base: Checkpoint, vector: Checkpoint, dtype: torch.dtype | None,
               selection: TensorSelection = EVERYTHING) -> list[TensorJob]:
    """Every tensor of the base: plus the vector's where it has one that is selected, else copied
    (converted only when another output dtype was asked for); non-float tensors copied as bytes.
    Tensors the vector omits as zero are copied too (base + scale * 0 is the base)."""
    zeros = read_zero_tensors(vector)
    vector_names = [*vector.names, *zeros]
    everything = list(dict.fromkeys([*base.names, *vector_names]))
    applied = set(selection.pick(vector_names, everything, f"tensor of the vector {vector.path}"))
    for name in vector_names:
        if name not in applied:
            continue
        if name not in base:
            raise CheckpointError(f"{vector.path}: tensor '{name}' is not in the base {base.path}")
        if name in vector:
            require_float(name, vector, "task vectors hold floating-point tensors only")
            held = stored(name, vector)
        else:
            held = listed(vector.path, zeros[name])
        if is_float(base.entry(name).dtype):
            check_same_shape(name, [stored(name, base), held])
    jobs = []
    for name in base.names:
        entry = base.entry(name)
        if not is_float(entry.dtype):
            jobs.append(TensorJob(name, entry.shape, entry.dtype, (Source(base, name),), compute_dtype=None))
            continue
        out_dtype = dtype or entry.dtype
        if name not in vector or name not in applied:
            work = working_dtype(entry.dtype) if out_dtype != entry.dtype else None
            jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name),), work))
            continue
        work = working_dtype(entry.dtype, vector.entry(name).dtype)
        jobs.append(TensorJob(name, entry.shape, out_dtype, (Source(base, name), Source(vector, name)), work))
    return jobs
