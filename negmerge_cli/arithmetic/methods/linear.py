"""Linear combinations: task arithmetic (sum) and the (weighted) mean."""

from __future__ import annotations

from typing import Iterator

from negmerge_cli.arithmetic.methods.base import Chunk, MergeMethod, register
from negmerge_cli.core.lazy import torch


def weighted_sum(chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
    """sum_i w_i tau_i, accumulated input by input (unweighted inputs are added exactly)."""
    total = None
    for index, tau in enumerate(taus):
        if chunk.weights is not None:
            tau.mul_(chunk.weights[index])  # finite weights: NaN and Inf stay NaN or Inf (Inf * 0 is NaN)
        total = tau if total is None else total.add_(tau)
    chunk.verify_sum(total)
    return total


@register
class Sum(MergeMethod):
    name = "sum"
    summary = "Task arithmetic: the (weighted) sum of the task vectors."
    formula = "out = sum_i w_i tau_i   (w_i = 1 unless --weight is given)"
    uses_weights = True
    state_buffers = 1
    sums_every_input = True

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        return weighted_sum(chunk, taus)


@register
class Mean(MergeMethod):
    name = "mean"
    summary = "Uniform (or weighted) average of the task vectors."
    formula = "out = (sum_i w_i tau_i) / (sum_i w_i)   (w_i = 1: the plain mean)"
    uses_weights = True
    state_buffers = 1
    sums_every_input = True

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        total = weighted_sum(chunk, taus)
        return total.div_(sum(chunk.weights) if chunk.weights is not None else chunk.count)
