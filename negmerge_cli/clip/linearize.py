"""Linearized (tangent) image encoders: the first-order Taylor expansion of an encoder around its
pretrained weights theta0 ("Task Arithmetic in the Tangent Space", Ortiz-Jimenez et al. 2023,
whose ``linearize.py`` the NegMerge release reuses):

    f_lin(x; theta) = f(x; theta0) + J_theta f(x; theta0) (theta - theta0)

computed with one Jacobian-vector product. Task vectors are theta - theta0 as usual, so the
arithmetic of vector, merge and apply is unchanged; only the forward pass differs. For a negated
vector the features at every lambda are f0 - lambda * u with (f0, u) = (f(x; theta0), J tau) from
one jvp pass (:func:`features_and_direction`).

Forward-mode AD has no kernel for the fused attention paths (``_native_multi_head_attention``, the
flash and memory-efficient SDPA kernels), so every jvp runs under :func:`math_attention`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Mapping

import torch


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """The math SDPA backend and no MultiheadAttention fast path, restored afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _jvp(module: torch.nn.Module, primals: Mapping[str, torch.Tensor], tangents: Mapping[str, torch.Tensor],
         images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(images; primals), J f(images; primals) tangents), ``module``'s buffers as they are."""
    from torch.func import functional_call, jvp

    buffers = dict(module.named_buffers())

    def forward(params):
        return functional_call(module, {**params, **buffers}, (images,))

    with math_attention():
        return jvp(forward, (dict(primals),), (dict(tangents),))


class LinearizedEncoder(torch.nn.Module):
    """``encoder`` run as its linearization around ``theta0``: ``encoder``'s own parameters are theta
    (they train); theta0 and the buffers are a frozen copy in eval mode (the release's ``func0``).

    ``theta0``: the expansion point's parameters by name; default: ``encoder``'s as they are now."""

    def __init__(self, encoder: torch.nn.Module, theta0: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        self.encoder = encoder
        self.expansion = copy.deepcopy(encoder).eval()
        if theta0 is not None:
            self.expansion.load_state_dict(dict(theta0), strict=False)
        for parameter in self.expansion.parameters():
            parameter.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        theta0 = dict(self.expansion.named_parameters())
        delta = {name: theta - theta0[name] for name, theta in self.encoder.named_parameters()}
        out, change = _jvp(self.expansion, theta0, delta, images)
        return out + change

    def train(self, mode: bool = True) -> "LinearizedEncoder":
        self.training = mode
        self.encoder.train(mode)  # theta's module only: the expansion stays in eval mode
        return self


def features_and_direction(encoder: torch.nn.Module, vector: Mapping[str, torch.Tensor],
                           images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f0, u): ``encoder``'s features at its own weights (theta0) and their derivative along the
    task vector, so that the linearized features of theta0 - lambda * vector are f0 - lambda * u
    for every lambda at the cost of one jvp. ``vector``: tensors by the encoder's parameter names
    (missing names: zero)."""
    theta0 = {name: p.detach() for name, p in encoder.named_parameters()}
    tangents = {name: vector[name].to(p) if name in vector else torch.zeros_like(p) for name, p in theta0.items()}
    with torch.no_grad():
        return _jvp(encoder, theta0, tangents, images)
