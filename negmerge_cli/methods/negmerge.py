"""NegMerge (Kim, Han, Choe, ICML 2025): keep only the elements whose sign all k vectors agree on."""

from __future__ import annotations

from typing import Iterator

from negmerge_cli.lazy import torch

from negmerge_cli.methods.base import Chunk, MergeMethod, register


@register
class NegMerge(MergeMethod):
    name = "negmerge"
    summary = "Sign-consensus merge: mean of the k vectors where all k signs agree strictly, else 0."
    formula = "s = sum_i sign(tau_i);  out = (sum_i tau_i) / k  where |s| == k,  else 0"

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        # Two running accumulators (sum and sign count): memory does not depend on k.
        total = next(taus)
        signs = torch.sign(total)
        for tau in taus:
            total.add_(tau)
            signs.add_(torch.sign(tau))
        agree = signs.abs_() == chunk.count  # sign(0) = 0, so an unchanged element never agrees
        return total.div_(chunk.count).masked_fill_(~agree, 0.0)
