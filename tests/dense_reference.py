"""Dense, obviously correct reference implementations of the merge methods (whole tensors, all k
at once), written from the formulas in docs/methods.md and independent of the streaming code."""

from __future__ import annotations

import math

import torch


def sequential_sum(taus: list[torch.Tensor]) -> torch.Tensor:
    total = taus[0].clone()
    for tau in taus[1:]:
        total = total + tau
    return total


def negmerge(taus: list[torch.Tensor]) -> torch.Tensor:
    k = len(taus)
    signs = sum(torch.sign(t) for t in taus)
    return torch.where(signs.abs() == k, sequential_sum(taus) / k, torch.zeros_like(taus[0]))


def weighted_sum(taus: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    weights = weights or [1.0] * len(taus)
    return sum(w * t for w, t in zip(weights, taus))


def mean(taus: list[torch.Tensor], weights: list[float] | None = None) -> torch.Tensor:
    weights = weights or [1.0] * len(taus)
    return weighted_sum(taus, weights) / sum(weights)


def ties(taus: list[torch.Tensor], density: float) -> torch.Tensor:
    kept = []
    for tau in taus:
        n = tau.numel()
        if n == 0:
            kept.append(tau)
            continue
        m = math.ceil(density * n)
        threshold = torch.sort(tau.abs().flatten(), descending=True).values[m - 1]
        kept.append(torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau)))
    stacked = torch.stack(kept)
    elected = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    count = agree.sum(0)
    total = (stacked * agree).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def magmax(taus: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack(taus)
    index = stacked.abs().argmax(0, keepdim=True)  # first maximum on ties
    return stacked.gather(0, index).squeeze(0)


def dare(taus: list[torch.Tensor], masks: list[torch.Tensor], drop_rate: float,
         weights: list[float] | None = None) -> torch.Tensor:
    weights = weights or [1.0] * len(taus)
    rescaled = [m * t / (1 - drop_rate) for m, t in zip(masks, taus)]
    return weighted_sum(rescaled, weights) / sum(weights)
