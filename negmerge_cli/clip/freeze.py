"""Image-encoder parameters kept at their base values while fine-tuning (``finetune --freeze GLOB``).

Globs match OpenCLIP state-dict names (``fnmatch``, case-sensitive; ``*`` also crosses dots). A
frozen parameter gets ``requires_grad`` False and is not given to the optimizer, so neither a
gradient step nor AdamW's weight decay touches it: it stays bit-for-bit the base's, and every task
vector is exactly zero there. The paper's released code freezes the visual attention this way
(``RELEASE_FROZEN``).
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import torch

from negmerge_cli.core.errors import UsageError, option

ENCODER = "visual."
# The release swaps every visual MultiheadAttention for split Q/K/V/O linear layers and freezes them:
# in OpenCLIP names, in_proj_weight, in_proj_bias, out_proj.weight and out_proj.bias of each block.
RELEASE_FROZEN = "visual.transformer.resblocks.*.attn.*"


def encoder_sizes(model_name: str) -> dict[str, int]:
    """Element count of every image-encoder parameter, from a skeleton on the meta device (no weights,
    no memory), so globs are checked before anything is built or written."""
    from negmerge_cli.clip import models

    return {name: p.numel() for name, p in models.skeleton(model_name).named_parameters() if name.startswith(ENCODER)}


def select(sizes: dict[str, int], globs: Sequence[str]) -> list[str]:
    """The names the globs freeze; every glob must match and something must stay trainable."""
    for glob in globs:
        if not any(fnmatch.fnmatchcase(name, glob) for name in sizes):
            example = next(iter(sizes), "visual.proj")
            raise UsageError(f"{option('freeze')} {glob!r} matches no trainable parameter (image-encoder "
                             f"parameters are named as in the OpenCLIP state dict, e.g. {example!r})")
    frozen = [name for name in sizes if any(fnmatch.fnmatchcase(name, glob) for glob in globs)]
    if frozen and len(frozen) == len(sizes):
        raise UsageError(f"{option('freeze')} {' '.join(map(repr, globs))} freezes every parameter of the "
                         "image encoder: nothing would train")
    return frozen


def apply(model: torch.nn.Module, globs: Sequence[str]) -> dict:
    """Freeze the image-encoder parameters the globs match; their counts, for the run's statistics."""
    parameters = {name: p for name, p in model.named_parameters() if name.startswith(ENCODER)}
    frozen = select({name: p.numel() for name, p in parameters.items()}, globs)
    for name in frozen:
        parameters[name].requires_grad_(False)
    frozen_elements = sum(parameters[name].numel() for name in frozen)
    return {"frozen_tensors": len(frozen), "frozen_parameters": frozen_elements,
            "trained_parameters": sum(p.numel() for p in parameters.values()) - frozen_elements}
