"""``vector``: task vectors tau = finetuned - base, over the (selected) floating-point tensors.

Tensors whose tau is zero in every element are left out and listed in ``negmerge.zero_tensors``
(unless ``keep_zero``); ``merge`` does the same for results that are zero in all its inputs."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, Sequence

import torch

from negmerge_cli.arithmetic import running_stats as running_statistics
from negmerge_cli.arithmetic.plans import plan_merge, split_zero_jobs, task_vectors
from negmerge_cli.arithmetic.selection import EVERYTHING, TensorSelection
from negmerge_cli.arithmetic.streaming import Engine, TensorJob
from negmerge_cli.checkpoint import hub, kinds, linearization
from negmerge_cli.checkpoint.lora import check_against_base, is_adapter
from negmerge_cli.checkpoint.provenance import TASK_VECTOR, provenance
from negmerge_cli.checkpoint.reader import INDEX_SUFFIX
from negmerge_cli.checkpoint.zero_tensors import zero_tensors_metadata
from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.output import output
from negmerge_cli.stages.common import StreamOptions, StreamResult, open_inputs, refuse_base_among, stream_to_file


def make_vector(base: str | Path, finetuned: str | Path, output: str | Path,
                options: StreamOptions | None = None, selection: TensorSelection = EVERYTHING,
                buffers: str | None = None) -> StreamResult:
    """Write tau = finetuned - base over the selected tensors. Integer and bool tensors are not part
    of a vector and are left out, and so (unless ``options.keep_zero``) are all-zero taus and, unless
    ``buffers="include"``, BatchNorm running statistics (:mod:`negmerge_cli.arithmetic.running_stats`)."""
    options = options or StreamOptions()
    base, finetuned = hub.resolve(base), hub.resolve(finetuned)  # a Hub id becomes its cached snapshot
    with files.operation(), ExitStack() as stack:
        base_checkpoint = open_inputs(stack, [base], options, kinds.VECTOR_BASE)[0]
        finetuned_checkpoint = open_inputs(stack, [finetuned], options, kinds.VECTOR_INPUT)[0]
        refuse_base_among(base_checkpoint, [finetuned_checkpoint], kinds.VECTOR_INPUT)
        linear = linearization.check_base(base, linearization.shared([(finetuned, finetuned_checkpoint)]), "base")
        # a LoRA adapter is a task vector already: checked against the base, written as it reads
        from_adapter = is_adapter(finetuned_checkpoint)
        if from_adapter:
            check_against_base(finetuned_checkpoint, base_checkpoint)
        jobs = plan_merge([finetuned_checkpoint], None if from_adapter else base_checkpoint, options.torch_dtype,
                          options.missing_as_zero, selection)
        jobs, statistics = running_statistics.apply_choice(jobs, buffers)
        jobs, omitted = omit_zero_tensors(jobs, not from_adapter, options, Path(output))

        def process(job: TensorJob, start: int, stop: int, slices: Iterator[torch.Tensor]) -> torch.Tensor:
            return next(task_vectors(slices, has_base=not from_adapter))

        metadata = {**provenance("vector", kind=TASK_VECTOR), **selection.metadata(), **statistics, **omitted,
                    **linear}
        hashed = {"inputs": [(finetuned, finetuned_checkpoint)], "base": [(base, base_checkpoint)]}
        return stream_to_file(Path(output), jobs, process, metadata, hashed, options,
                              description=f"vector {Path(finetuned).name}")


def omit_zero_tensors(jobs: list[TensorJob], has_base: bool, options: StreamOptions,
                      target: Path) -> tuple[list[TensorJob], dict[str, str]]:
    """The jobs to write, and the metadata listing the all-zero results left out (see
    :func:`~negmerge_cli.arithmetic.plans.split_zero_jobs`); everything when ``keep_zero``."""
    if options.keep_zero:
        return jobs, {}
    files.check_target(target, force=options.force)  # fail before reading, not after (the writer checks again)
    engine = Engine(options.torch_device, options.budget, not options.allow_nonfinite)
    kept, zeros = split_zero_jobs(jobs, has_base, engine)
    if zeros:
        elements = sum(z.numel for z in zeros)
        output().log(f"{target}: leaving out {len(zeros)} all-zero tensors ({elements:,} elements), "
                     f"listed in the metadata")
    return kept, zero_tensors_metadata(zeros)


def make_vectors(base: str | Path, finetuned: Sequence[str | Path], out_dir: str | Path,
                 options: StreamOptions | None = None, selection: TensorSelection = EVERYTHING,
                 buffers: str | None = None) -> list[StreamResult]:
    """One task vector per fine-tuned checkpoint, written to ``out_dir`` under the input's name.

    All or nothing: the vectors are renamed into place together once every one is complete."""
    out_dir = Path(out_dir)
    targets = [out_dir / vector_file_name(Path(str(f))) for f in finetuned]  # named as given (ORG/NAME: NAME)
    if len(set(targets)) != len(targets):
        raise UsageError(f"{option('out_dir')}: two inputs have the same name; their vectors would collide")
    base = hub.resolve(base)  # once for all the inputs
    with files.operation(), files.deferred_commits():
        return [make_vector(base, f, t, options, selection, buffers) for f, t in zip(finetuned, targets)]


def vector_file_name(finetuned: Path) -> str:
    """``ft_lr1e-5.safetensors`` -> ``ft_lr1e-5.safetensors`` (folders and indexes by their name)."""
    name = finetuned.name
    if name.endswith(INDEX_SUFFIX):
        name = name[: -len(INDEX_SUFFIX)]
    return name if name.endswith(".safetensors") else name + ".safetensors"


def write_vectors(base: str | Path, finetuned: Sequence[str | Path], *, output: str | Path | None = None,
                  out_dir: str | Path | None = None, options: StreamOptions | None = None,
                  selection: TensorSelection = EVERYTHING, buffers: str | None = None) -> list[StreamResult]:
    """``vector``'s two forms: one input to ``output``, or any number into ``out_dir``."""
    running_statistics.check_choice(buffers)
    if (output is None) == (out_dir is None):
        raise UsageError(f"give exactly one of {option('output')} (one input) or {option('out_dir')} (any number of inputs)")
    if output is not None:
        if len(finetuned) != 1:
            raise UsageError(f"{option('output')} takes one input, got {len(finetuned)}; use {option('out_dir')} for several")
        return [make_vector(base, finetuned[0], output, options, selection, buffers)]
    return make_vectors(base, finetuned, out_dir, options, selection, buffers)
