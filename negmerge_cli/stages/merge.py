"""``merge``: combine k task vectors (or k fine-tuned checkpoints minus a base) into one vector."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from negmerge_cli.checkpoint.format import is_float
from negmerge_cli.checkpoint.provenance import provenance
from negmerge_cli.checkpoint.reader import Checkpoint
from negmerge_cli.errors import UsageError
from negmerge_cli.methods import Chunk, MergeMethod, create_method
from negmerge_cli.stages.common import (
    StreamOptions,
    StreamResult,
    check_shapes,
    compute_dtype,
    missing_error,
    open_inputs,
    output_dtype,
    require_float,
    stream_to_file,
)
from negmerge_cli.streaming import Engine, Source, TensorJob


def merge_vectors(
    inputs: Sequence[str | Path],
    output: str | Path,
    method: str | MergeMethod = "negmerge",
    *,
    base: str | Path | None = None,
    weights: Sequence[float] | None = None,
    options: StreamOptions | None = None,
    **method_params: object,
) -> StreamResult:
    """Merge task vectors ``inputs`` into ``output`` with ``method``.

    With ``base``, the inputs are fine-tuned checkpoints and each vector is formed on the fly as
    input - base (no intermediate files). Extra keyword arguments are the method's parameters.
    """
    options = options or StreamOptions()
    merger = method if isinstance(method, MergeMethod) else create_method(method, **method_params)
    if not inputs:
        raise UsageError("merge needs at least one input")
    weights = _check_weights(merger, weights, len(inputs))
    with ExitStack() as stack:
        sources = open_inputs(stack, list(inputs), options)
        base_checkpoint = open_inputs(stack, [base], options)[0] if base is not None else None
        jobs = plan_merge(sources, base_checkpoint, options)
        has_base = base_checkpoint is not None
        buffers = merger.state_buffers + (len(sources) if merger.holds_all_inputs else 0)

        def process(job: TensorJob, start: int, stop: int, slices: Iterator[torch.Tensor]) -> torch.Tensor:
            chunk = Chunk(job.name, start, stop, len(sources), weights)
            return merger.merge_chunk(chunk, task_vectors(slices, has_base))

        def before_job(job: TensorJob, engine: Engine) -> None:
            def read_taus(index: int) -> Iterator[torch.Tensor]:
                # whole tensors when the budget allows: per-tensor statistics (TIES' top-k) then
                # take one kthvalue instead of a bisection over many slices
                picked = (job.sources[0], job.sources[1 + index]) if has_base else (job.sources[index],)
                for start, stop in engine.slices(job, buffers, cache_sized=False):
                    yield from task_vectors((engine.read_prepared(job, s, start, stop) for s in picked), has_base)

            merger.prepare(job.name, job.numel, len(sources), read_taus)

        metadata = provenance(
            "merge", kind="task_vector", method=merger.name, params=merger.settings,
            weights=list(weights) if weights else None,
        )
        hashed = {"inputs": sources, **({"base": [base_checkpoint]} if has_base else {})}
        return stream_to_file(
            Path(output), jobs, process, metadata, hashed, options,
            float_buffers=lambda job: buffers, before_job=before_job, description=f"merge ({merger.name})",
        )


def task_vectors(slices: Iterable[torch.Tensor], has_base: bool) -> Iterator[torch.Tensor]:
    """The slices of one chunk as task-vector slices: as they are, or minus the first (the base)."""
    slices = iter(slices)
    if not has_base:
        yield from slices
        return
    base = next(slices)
    for finetuned in slices:
        yield finetuned.sub_(base)


def plan_merge(sources: list[Checkpoint], base: Checkpoint | None, options: StreamOptions) -> list[TensorJob]:
    """One job per tensor of the merged vector, with every input checked against the others."""
    return _plan_with_base(sources, base, options) if base else _plan_vectors(sources, options)


def _plan_vectors(sources: list[Checkpoint], options: StreamOptions) -> list[TensorJob]:
    names = list(dict.fromkeys(n for c in sources for n in c.names))
    jobs = []
    for name in names:
        present = _holding(name, sources, options)
        for checkpoint in present:
            require_float(name, checkpoint, "task vectors hold floating-point tensors only")
        check_shapes(name, present)
        stored = [c.entry(name).dtype for c in present]
        row = tuple(Source(c if name in c else None, name) for c in sources)
        jobs.append(TensorJob(name, present[0].entry(name).shape, output_dtype(options.torch_dtype, *stored),
                              row, compute_dtype(*stored)))
    return jobs


def _plan_with_base(sources: list[Checkpoint], base: Checkpoint, options: StreamOptions) -> list[TensorJob]:
    names = [n for n in base.names if is_float(base.entry(n).dtype)]
    for checkpoint in sources:  # a fine-tuned float tensor the base lacks has no task vector
        extra = [n for n in checkpoint.names if n not in base and is_float(checkpoint.entry(n).dtype)]
        if extra:
            raise missing_error(extra[0], base, checkpoint, hint=False)
    jobs = []
    for name in names:
        present = _holding(name, sources, options, reference=base)
        for checkpoint in present:
            require_float(name, checkpoint, "it is floating-point in the base")
        check_shapes(name, [base] + present)
        stored = [base.entry(name).dtype] + [c.entry(name).dtype for c in present]
        # A tensor missing from a fine-tuned checkpoint counts as unchanged: its tau is zero.
        row = (Source(base, name),) + tuple(Source(c if name in c else base, name) for c in sources)
        jobs.append(TensorJob(name, base.entry(name).shape, output_dtype(options.torch_dtype, *stored),
                              row, compute_dtype(*stored)))
    return jobs


def _holding(name: str, sources: list[Checkpoint], options: StreamOptions,
             reference: Checkpoint | None = None) -> list[Checkpoint]:
    """The inputs that hold tensor ``name``; one lacking it is an error unless --missing-as-zero."""
    present = [c for c in sources if name in c]
    if len(present) < len(sources) and not options.missing_as_zero:
        absent = next(c for c in sources if name not in c)
        raise missing_error(name, absent, reference or present[0], hint=True)
    return present


def _check_weights(method: MergeMethod, weights: Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    if not weights:
        return None
    if not method.uses_weights:
        raise UsageError(f"--weight: method '{method.name}' does not use weights")
    if len(weights) != count:
        raise UsageError(f"--weight given {len(weights)} times for {count} inputs; give one per input")
    if sum(weights) == 0 and method.name != "sum":
        raise UsageError("--weight: weights sum to zero")
    return tuple(float(w) for w in weights)
