"""``merge``: combine k task vectors (or k fine-tuned checkpoints minus a base) into one vector."""

from __future__ import annotations

import functools
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, Sequence

import torch

from negmerge_cli.arithmetic import running_stats as running_statistics
from negmerge_cli.arithmetic.methods import Chunk, MergeMethod, create_method
from negmerge_cli.arithmetic.plans import plan_merge, task_vectors, vector_sources
from negmerge_cli.arithmetic.selection import EVERYTHING, TensorSelection
from negmerge_cli.arithmetic.streaming import Engine, TensorJob, check_sum
from negmerge_cli.checkpoint import hub, kinds, linearization
from negmerge_cli.checkpoint.folder import plan_output
from negmerge_cli.checkpoint.provenance import TASK_VECTOR, provenance
from negmerge_cli.core import files, limits
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.stages.common import StreamOptions, StreamResult, open_inputs, refuse_base_among, stream_to_file
from negmerge_cli.stages.vector import omit_zero_tensors


def merge_vectors(
    inputs: Sequence[str | Path],
    output: str | Path,
    method: str | MergeMethod = "negmerge",
    *,
    base: str | Path | None = None,
    weights: Sequence[float] | None = None,
    options: StreamOptions | None = None,
    selection: TensorSelection = EVERYTHING,
    buffers: str | None = None,
    **method_params: object,
) -> StreamResult:
    """Merge task vectors ``inputs`` into ``output`` with ``method``, over the selected tensors.

    With ``base``, the inputs are fine-tuned checkpoints and each vector is formed on the fly as
    input - base (no intermediate files). Extra keyword arguments are the method's parameters.
    Tensors a vector lists as omitted zeros read as zeros; a result that is zero in every input is
    left out in turn (unless ``options.keep_zero``). An ``output`` folder (existing, or ending
    with ``/``) gets the weights in the base's layout, the base folder's other files and a model
    card (:mod:`negmerge_cli.checkpoint.folder`).
    """
    running_statistics.check_choice(buffers)
    with files.operation():
        return _merge(inputs, output, method, base, weights, options or StreamOptions(), selection, method_params,
                      buffers)


def _merge(inputs, output, method, base, weights, options: StreamOptions, selection: TensorSelection,
           method_params: dict, buffers: str | None = None) -> StreamResult:
    merger = method if isinstance(method, MergeMethod) else create_method(method, **method_params)
    if not inputs:
        raise UsageError("merge needs at least one input")
    weights = _check_weights(merger, weights, len(inputs))
    inputs = [hub.resolve(source) for source in inputs]  # Hub ids become their cached snapshots
    base = hub.resolve(base) if base is not None else None
    with ExitStack() as stack:
        # without a base the inputs are task vectors; with one, fine-tuned checkpoints (never the base again)
        base_checkpoint = open_inputs(stack, [base], options, kinds.MERGE_BASE)[0] if base is not None else None
        role = kinds.MERGE_VECTOR if base is None else kinds.MERGE_FINETUNED
        sources = open_inputs(stack, list(inputs), options, role)
        if base_checkpoint is not None:
            refuse_base_among(base_checkpoint, sources, role)
        linear = linearization.shared(list(zip(inputs, sources)))  # checked before any work
        if base_checkpoint is not None:
            linear = linearization.check_base(base, linear, "base")
        target = plan_output(output, options, base, base_checkpoint)
        jobs = plan_merge(sources, base_checkpoint, options.torch_dtype, options.missing_as_zero, selection)
        has_base = base_checkpoint is not None
        statistics = {}
        if has_base:  # vectors made here from checkpoints follow vector's rule; given vectors are kept as made
            jobs, statistics = running_statistics.apply_choice(jobs, buffers)
        jobs, omitted = omit_zero_tensors(jobs, has_base, options, target.weights)
        # float buffers per element while merging (the slice size follows from it and the budget)
        float_buffers = merger.state_buffers + (len(sources) if merger.holds_all_inputs else 0)
        # methods that sum every input check one running sum per slice instead of every input
        sums_checked = merger.sums_every_input and not options.allow_nonfinite

        def process(job: TensorJob, start: int, stop: int, slices: Iterator[torch.Tensor]) -> torch.Tensor:
            verify = {"verify_sum": functools.partial(check_sum, job, start, stop)} if sums_checked else {}
            chunk = Chunk(job.name, start, stop, len(sources), weights, **verify)
            return merger.merge_chunk(chunk, task_vectors(slices, has_base))

        def before_job(job: TensorJob, engine: Engine) -> None:
            def read_taus(index: int) -> Iterator[torch.Tensor]:
                # whole tensors when the budget allows: per-tensor statistics (TIES' top-k) then
                # take one kthvalue instead of a bisection over many slices
                picked = vector_sources(job, index, has_base)
                for start, stop in engine.slices(job, float_buffers, cache_sized=False):
                    yield from task_vectors((engine.read_prepared(job, s, start, stop) for s in picked), has_base)

            merger.prepare(job.name, job.numel, len(sources), read_taus)

        metadata = provenance(
            "merge", kind=TASK_VECTOR, method=merger.name, params=merger.settings,
            weights=list(weights) if weights else None,
        ) | selection.metadata() | statistics | omitted | linear
        hashed = {"inputs": list(zip(inputs, sources)), **({"base": [(base, base_checkpoint)]} if has_base else {})}
        if len(sources) == 1:  # allowed (TIES trims, DARE drops even one vector), but rarely what was meant
            _warn_single_input(inputs[0], merger.name)
        return target.write(lambda weights, shard_bytes: stream_to_file(
            weights, jobs, process, metadata, hashed, options,
            float_buffers=lambda job: float_buffers, before_job=before_job, description=f"merge ({merger.name})",
            sums_checked=sums_checked, shard_bytes=shard_bytes,
        ))


def _check_weights(method: MergeMethod, weights: Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    if not weights:
        return None
    flag = option("weight")
    if not method.uses_weights:
        raise UsageError(f"{flag}: method '{method.name}' does not use weights")
    if len(weights) != count:
        raise UsageError(f"{flag} given {len(weights)} times for {count} inputs; give one per input")
    limits.check("merge", "weight", weights)
    if sum(weights) == 0 and method.name != "sum":
        raise UsageError(f"{flag}: weights sum to zero")
    return tuple(float(w) for w in weights)


def _warn_single_input(path, method: str) -> None:
    from negmerge_cli.core.output import output

    output().warn(f"{path}: merging a single input, so nothing is combined: the result is its task vector as "
                  f"{method} alone leaves it; NegMerge needs k >= 2 fine-tunes of the same forget set (for one, "
                  "'negmerge vector' makes its task vector)")
