"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

import math
from typing import Iterator

from negmerge_cli.arithmetic.methods.base import Chunk, MergeMethod, Param, TauReader, register
from negmerge_cli.core.lazy import torch


@register
class Ties(MergeMethod):
    name = "ties"
    summary = "Trim each vector to its top-density magnitudes (per tensor), elect signs, disjoint mean."
    formula = (
        "m = ceil(density * n); t_i = m-th largest |tau_i| in the tensor; kept_i = tau_i * [|tau_i| >= t_i]; "
        "sigma = sign(sum_i kept_i); out = sum_i kept_i [sign(kept_i) == sigma != 0] / "
        "max(1, #{i: sign(kept_i) == sigma != 0})"
    )
    params = (
        Param("density", float, 0.2, "Fraction of each tensor's largest-magnitude elements kept per vector."),
    )
    holds_all_inputs = True
    state_buffers = 3

    def prepare(self, tensor: str, numel: int, count: int, read_taus: TauReader) -> None:
        # Top-k is taken per tensor (as mergekit does), not over the whole model as in the original
        # TIES code: per tensor needs one tensor at a time, which is what makes streaming possible.
        keep = math.ceil(self.density * numel)
        rank = numel - keep + 1  # the threshold is the rank-th smallest magnitude
        self._thresholds = [kth_smallest_magnitude(lambda i=i: read_taus(i), rank) for i in range(count)]

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        kept = [tau.masked_fill_(tau.abs() < self._thresholds[i], 0.0) for i, tau in enumerate(taus)]
        mass = kept[0].clone()
        for tau in kept[1:]:
            mass.add_(tau)
        elected = torch.sign(mass)
        total = torch.zeros_like(mass)
        agreeing = torch.zeros_like(mass)
        for tau in kept:
            agree = (torch.sign(tau) == elected) & (tau != 0)
            total.add_(tau.masked_fill_(~agree, 0.0))
            agreeing.add_(agree)
        return total.div_(agreeing.clamp_(min=1.0))


def kth_smallest_magnitude(read: "callable[[], Iterator[torch.Tensor]]", rank: int) -> float | torch.Tensor:
    """The rank-th smallest |x| (1-based) over a tensor delivered in slices by ``read()``.

    One slice: ``kthvalue``. Several slices (tensor larger than the memory budget): an exact
    bisection over the floats' bit patterns (monotonic for non-negative floats), one counting pass
    per bit, so memory stays at one slice.
    """
    if rank <= 1:
        return 0.0  # keep everything
    slices = read()
    first = next(slices)
    rest = next(slices, None)
    if rest is None:
        return torch.kthvalue(first.abs().reshape(-1), rank).values
    int_type = {torch.float32: torch.int32, torch.float64: torch.int64}[first.dtype]
    low, high = 0, int(torch.tensor(float("inf"), dtype=first.dtype).view(int_type))
    while low < high:  # smallest bit pattern b with count(|x| <= b) >= rank
        middle = (low + high) // 2
        bound = torch.tensor(middle, dtype=int_type).view(first.dtype).item()
        below = sum(int((piece.abs() <= bound).sum()) for piece in read())
        low, high = (middle + 1, high) if below < rank else (low, middle)
    return torch.tensor(low, dtype=int_type).view(first.dtype).item()
