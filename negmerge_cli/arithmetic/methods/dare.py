"""DARE (Yu et al., 2024): drop elements at random, rescale the survivors, then average."""

from __future__ import annotations

import hashlib
from typing import Iterator

from negmerge_cli.arithmetic.methods.base import Chunk, MergeMethod, Param, register, uniform_or
from negmerge_cli.core.lazy import torch

_MASK64 = (1 << 64) - 1


@register
class Dare(MergeMethod):
    name = "dare"
    summary = "Drop each element with probability p, rescale survivors by 1/(1-p), then (weighted) mean."
    formula = "m_i ~ Bernoulli(1-p) per element (seeded);  out = sum_i w_i m_i tau_i / (1-p) / sum_i w_i"
    params = (
        Param("drop_rate", float, 0.5, "Probability p of dropping each element."),
        Param("seed", int, 0, "Seed of the drop masks."),
    )
    uses_weights = True

    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        weights = uniform_or(chunk.weights, chunk.count)
        total = None
        for index, tau in enumerate(taus):
            keep = keep_mask(self.seed, index, chunk.name, chunk.start, tau.numel(), self.drop_rate, tau.device)
            tau.mul_(keep).mul_(weights[index] / (1.0 - self.drop_rate))
            total = tau if total is None else total.add_(tau)
        return total.div_(sum(weights))


def keep_mask(seed: int, index: int, tensor: str, start: int, count: int, drop_rate: float,
              device: torch.device) -> torch.Tensor:
    """Bernoulli(1 - drop_rate) mask for elements ``start..start+count`` of one input's tensor.

    A counter-based generator (SplitMix64 of the element's index, keyed by seed, input and tensor
    name): the same mask on any device, for any chunking, in any run.
    """
    name_key = int.from_bytes(hashlib.sha256(tensor.encode()).digest()[:8], "little")
    key = _splitmix64_int((seed * 0x9E3779B97F4A7C15 + index * 0xD1B54A32D192ED03 + name_key) & _MASK64)
    positions = torch.arange(start, start + count, dtype=torch.int64, device=device)
    bits = _splitmix64_tensor(positions * _signed(0x9E3779B97F4A7C15) + _signed(key))
    uniform53 = _shift_right(bits, 11)  # 53 random bits: uniform on [0, 2^53)
    return uniform53 >= int(round(drop_rate * (1 << 53)))


def _splitmix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64_tensor(z: torch.Tensor) -> torch.Tensor:
    # int64 arithmetic wraps modulo 2^64 on CPU and CUDA alike; shifts must be logical.
    z = (z ^ _shift_right(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shift_right(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shift_right(z, 31)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
