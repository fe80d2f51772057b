"""MagMax (Marczak et al., 2024): per element, the task vector entry of largest magnitude."""

from __future__ import annotations

from typing import Iterator

from negmerge_cli.arithmetic.methods.base import Chunk, MergeMethod, register
from negmerge_cli.core.lazy import torch


@register
class MagMax(MergeMethod):
    name = "magmax"
    summary = "Per element, the value of the vector with the largest magnitude (first on ties)."
    formula = "out = tau_j  with  j = argmax_i |tau_i|  (smallest i on ties)"

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        best = next(taus)
        best_magnitude = best.abs()
        for tau in taus:
            magnitude = tau.abs()
            larger = magnitude > best_magnitude  # strict: ties keep the earlier input
            best = torch.where(larger, tau, best)
            best_magnitude = torch.where(larger, magnitude, best_magnitude)
        return best
