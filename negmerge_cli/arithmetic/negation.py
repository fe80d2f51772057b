"""theta = base - lambda * tau, set in place in a live model for any lambda (no reload per lambda).

Works on any ``torch.nn.Module`` whose state dict names match the vector's: the coefficient search
keeps the base and the vector in memory and rewrites the parameters for each lambda.
"""

from __future__ import annotations

from pathlib import Path

import torch

from negmerge_cli.core.errors import CheckpointError


def load_task_vector(path: str | Path) -> dict[str, torch.Tensor]:
    """A task vector's tensors; refuses a file known to be a model checkpoint
    (:mod:`negmerge_cli.checkpoint.kinds`), and any NaN or Inf (a damaged vector would silently
    poison every lambda)."""
    from negmerge_cli.checkpoint import kinds, open_checkpoint

    with open_checkpoint(path, digest=False) as checkpoint:
        kinds.require_kind(checkpoint, kinds.EVAL_VECTOR)
        tensors = {name: checkpoint.read_tensor(name) for name in checkpoint.names}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or Inf")
    return tensors


class NegatedModel:
    """A model whose parameters are set to base - lambda * tau in place, for any lambda."""

    def __init__(self, model: torch.nn.Module, vector: dict[str, torch.Tensor], vector_path: str, model_name: str):
        self.model = model
        params = model.state_dict()
        device = next(model.parameters()).device
        self.targets, self.base, self.tau = {}, {}, {}
        for key, tau in vector.items():
            _check_matches(key, tau, params, vector_path, model_name)
            if not tau.is_floating_point():
                continue  # integer buffers are never part of a task vector
            self.targets[key] = params[key]
            self.base[key] = params[key].detach().clone().float()
            self.tau[key] = tau.to(device, torch.float32)
        if not self.targets:
            raise CheckpointError(f"{vector_path}: no floating-point tensor of the vector matches model {model_name}")
        # CLIP models: zero-shot heads depend on everything outside the image encoder (text tower,
        # logit scale). Classifiers have no such heads: their evaluation never reads this
        self.touches_text = any(not k.startswith("visual.") and bool(t.any()) for k, t in self.tau.items())

    @torch.no_grad()
    def set(self, coef: float) -> None:
        for key, target in self.targets.items():
            target.copy_(self.base[key] - coef * self.tau[key])


def _check_matches(key: str, tau: torch.Tensor, params: dict, vector_path: str, model_name: str) -> None:
    """Exact shapes: a transposed tensor with the right element count is a different tensor."""
    if key not in params:
        raise CheckpointError(f"{vector_path}: vector tensor '{key}' is not in model {model_name}")
    if tuple(tau.shape) != tuple(params[key].shape):
        raise CheckpointError(f"{vector_path}: vector tensor '{key}' has shape {tuple(tau.shape)}, the model's is "
                              f"{tuple(params[key].shape)}")
