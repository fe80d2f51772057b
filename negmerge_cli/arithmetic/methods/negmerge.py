"""NegMerge (Kim, Han, Choe, ICML 2025): keep only the elements whose sign all k vectors agree on."""

from __future__ import annotations

from typing import Iterator

from negmerge_cli.arithmetic.methods.base import Chunk, MergeMethod, register
from negmerge_cli.core.lazy import torch


@register
class NegMerge(MergeMethod):
    name = "negmerge"
    summary = "Sign-consensus merge: mean of the k vectors where all k signs agree strictly, else 0."
    formula = "s = sum_i sign(tau_i);  out = (sum_i tau_i) / k  where |s| == k,  else 0"

    sums_every_input = True
    state_buffers = 3

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        # Three running accumulators (sum, minimum, maximum): memory does not depend on k.
        # "All k signs agree strictly" (|sum_i sign(tau_i)| == k) is exactly "min > 0 or max < 0":
        # a zero or a NaN fails both tests as it fails the sign count. Two cheap passes per input,
        # instead of sign() into a new buffer and a float add into a sign count.
        total = next(taus)
        low, high = total.clone(), total.clone()
        for tau in taus:
            total.add_(tau)
            torch.minimum(low, tau, out=low)
            torch.maximum(high, tau, out=high)
        chunk.verify_sum(total)
        return keep_where(total.div_(chunk.count), low.gt_(0).add_(high.lt_(0)))


def keep_where(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` where ``keep`` is 1.0, +0.0 where it is 0.0, in place; exactly ``masked_fill``.

    Masking through the bits (AND with all ones or all zeros) is branch-free: a bool mask with
    ``masked_fill``/``where`` costs about 7 ns an element on CPU when the mask is unpredictable,
    as sign agreement is. Unlike multiplying by the mask, NaN and Inf are dropped to +0.0 too."""
    bits = torch.int64 if values.dtype == torch.float64 else torch.int32
    values.view(bits).bitwise_and_(keep.to(bits).neg_())
    return values
