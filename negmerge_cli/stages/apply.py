"""``apply``: theta = base + scale * vector (scale < 0 unlearns)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import torch

from negmerge_cli.arithmetic.plans import plan_apply
from negmerge_cli.arithmetic.selection import EVERYTHING, TensorSelection
from negmerge_cli.arithmetic.streaming import TensorJob
from negmerge_cli.checkpoint import hub, kinds, linearization
from negmerge_cli.checkpoint.folder import plan_output
from negmerge_cli.checkpoint.lora import check_against_base, is_adapter
from negmerge_cli.checkpoint.provenance import CHECKPOINT, architecture_of, provenance, vector_provenance
from negmerge_cli.core import files, limits
from negmerge_cli.stages.common import StreamOptions, StreamResult, open_inputs, stream_to_file


def apply_vector(base: str | Path, vector: str | Path, scale: float, output: str | Path,
                 options: StreamOptions | None = None, selection: TensorSelection = EVERYTHING) -> StreamResult:
    """Write base + scale * vector over the selected tensors. Tensors absent from the vector (or
    omitted as zero, or not selected), and non-float tensors, are copied from the base unchanged;
    the output keeps the base's dtypes unless ``options.dtype``. An ``output`` folder (existing,
    or ending with ``/``) becomes a complete model folder (:mod:`negmerge_cli.checkpoint.folder`)."""
    options = options or StreamOptions()
    limits.check("apply", "scale", scale)
    base, vector = hub.resolve(base), hub.resolve(vector)  # a Hub id becomes its cached snapshot
    with files.operation(), ExitStack() as stack:
        base_checkpoint = open_inputs(stack, [base], options, kinds.APPLY_BASE)[0]
        vector_checkpoint = open_inputs(stack, [vector], options, kinds.APPLY_VECTOR)[0]
        kinds.refuse_same_input(base_checkpoint, "base", vector_checkpoint, kinds.APPLY_VECTOR)
        linear = linearization.check_base(base, linearization.shared([(vector, vector_checkpoint)]), "base")
        if is_adapter(vector_checkpoint):
            check_against_base(vector_checkpoint, base_checkpoint)
        target = plan_output(output, options, base, base_checkpoint)
        jobs = plan_apply(base_checkpoint, vector_checkpoint, options.torch_dtype, selection)

        def process(job: TensorJob, start: int, stop: int, slices: Iterator[torch.Tensor]) -> torch.Tensor:
            theta = next(slices)
            if job.compute_dtype is not None and len(job.sources) == 2:
                # scale * vector first, then add: exactly the documented formula, no fused rounding.
                theta.add_(next(slices).mul_(scale))
            return theta

        # the result is the base's model: whoever rebuilds it needs the base's architecture entries
        # and whoever reads it, how its vector was made (its method and inputs): the whole chain
        metadata = {**provenance("apply", kind=CHECKPOINT, scale=scale,
                                 vector_provenance=vector_provenance(vector_checkpoint.metadata)),
                    **architecture_of(base_checkpoint.metadata), **selection.metadata(), **linear}
        hashed = {"base": [(base, base_checkpoint)], "vector": [(vector, vector_checkpoint)]}
        return target.write(lambda weights, shard_bytes: stream_to_file(
            weights, jobs, process, metadata, hashed, options, description="apply", shard_bytes=shard_bytes))
