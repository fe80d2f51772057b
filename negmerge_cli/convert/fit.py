"""Checking converted tensors against the target OpenCLIP model, and completing them (no I/O).

SOURCE must bring the image tower (``visual.*``) and nothing the model lacks, every tensor in the
model's shape. Tensors SOURCE lacks (the text tower, logit scale; a projection transformers'
``CLIPVisionModel`` does not hold) come from the pretrained model when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from negmerge_cli.errors import CheckpointError

IMAGE_TOWER = "visual."


@dataclass
class Fitted:
    tensors: dict[str, torch.Tensor]  # in the model's state-dict order
    filled: list[str] = field(default_factory=list)  # names taken from the pretrained model


def fit_to_model(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], model_name: str,
                 path: Path, pretrained: dict[str, torch.Tensor] | None = None) -> Fitted:
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: does not fit model {model_name}: {what}")

    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise fail(f"unexpected tensor '{unexpected[0]}'{_more(unexpected)}")
    if not any(k.startswith(IMAGE_TOWER) for k in state):
        raise fail("it holds no image-encoder tensors (visual.*)")
    shaped = {k: _shaped(v, expected[k], k, fail) for k, v in state.items()}
    missing = [k for k in expected if k not in shaped]
    if pretrained is None:
        tower = [k for k in missing if k.startswith(IMAGE_TOWER)]
        if tower:
            raise fail(f"missing tensor '{tower[0]}'{_more(tower)} (--pretrained can supply missing tensors)")
        return Fitted({k: shaped[k] for k in expected if k in shaped})
    return Fitted({k: shaped[k] if k in shaped else pretrained[k] for k in expected}, missing)


def _shaped(tensor: torch.Tensor, reference: torch.Tensor, name: str, fail) -> torch.Tensor:
    if tensor.shape == reference.shape:
        return tensor
    if tensor.numel() == reference.numel() == 1 and max(tensor.dim(), reference.dim()) <= 1:
        return tensor.reshape(reference.shape)  # logit_scale is 0-d or (1,) depending on the open_clip version
    raise fail(f"tensor '{name}' has shape {tuple(tensor.shape)}, the model needs {tuple(reference.shape)}")


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""
