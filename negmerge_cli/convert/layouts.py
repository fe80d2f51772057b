"""Key layouts of the research checkpoints, mapped to OpenCLIP's state-dict names (no I/O).

The task-arithmetic line of code saves ``ImageEncoder`` modules: the OpenCLIP model sits in the
attribute ``model``, so every key starts with ``model.``. The NegMerge release also replaces each
visual ``nn.MultiheadAttention`` by ``src.modeling.CustomMultiheadAttention``, four ``nn.Linear``
layers named ``Q``, ``K``, ``V`` and ``O`` (keys ``...attn.Q.weight``, ``...attn.Q.bias``...), made
by chunking ``in_proj_weight``/``in_proj_bias`` in three along dim 0. Fusing them back is the exact
inverse: concatenate Q, K, V in that order (how ``nn.MultiheadAttention`` splits its input
projection), and O is ``out_proj``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from negmerge_cli.errors import CheckpointError

OPEN_CLIP = "open_clip"
SPLIT_QKVO = "split-qkvo"

_SPLIT = re.compile(r"^(?P<block>.+\.attn)\.(?P<part>[QKVO])\.(?P<kind>weight|bias)$")
_RESEARCH_PREFIX = "model."


def require_tensors(state: dict[str, object], path: Path) -> dict[str, torch.Tensor]:
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: '{name}' is a {type(value).__name__}, not a tensor")
    return {name: value.detach() for name, value in state.items()}


def refuse_linearized(state: dict[str, object], path: Path) -> None:
    """Linearized (tangent) fine-tunes store parameters by position around a frozen copy
    (``model.params.N``, ``model.params0.N``, ``model_name``): a Taylor expansion, not a model."""
    if "model_name" in state or any(k.startswith("model.params0.") for k in state):
        raise CheckpointError(
            f"{path}: a linearized (--finetuning-mode=linear) fine-tune; its weights define a first-order "
            "expansion around the pretrained model, not an OpenCLIP model: convert standard fine-tunes"
        )


def from_research(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """OpenCLIP names for an ImageEncoder's (or a bare OpenCLIP model's) state dict, and its layout."""
    if state and all(k.startswith(_RESEARCH_PREFIX) for k in state):
        state = {k[len(_RESEARCH_PREFIX):]: v for k, v in state.items()}
    layout = SPLIT_QKVO if any(_SPLIT.match(k) for k in state) else OPEN_CLIP
    return fuse_split_attention(state, path), layout


def fuse_split_attention(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``X.attn.{Q,K,V,O}.{weight,bias}`` -> ``X.attn.in_proj_{weight,bias}`` and ``X.attn.out_proj.*``."""
    fused: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict[tuple[str, str], torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _SPLIT.match(key)
        if match:
            blocks.setdefault(match["block"], {})[match["part"], match["kind"]] = tensor
        else:
            fused[key] = tensor
    for block, parts in blocks.items():
        for kind in ("weight", "bias"):
            absent = [p for p in "QKVO" if (p, kind) not in parts]
            if absent:
                raise CheckpointError(f"{path}: split attention '{block}' lacks '{block}.{absent[0]}.{kind}'")
            fused[f"{block}.in_proj_{kind}"] = _concatenate(block, kind, [parts[p, kind] for p in "QKV"], path)
            fused[f"{block}.out_proj.{kind}"] = parts["O", kind]
    return fused


def _concatenate(block: str, kind: str, parts: list[torch.Tensor], path: Path) -> torch.Tensor:
    if len({(p.shape, p.dtype) for p in parts}) != 1:
        shapes = ", ".join(f"{name} {tuple(p.shape)} {p.dtype}" for name, p in zip("QKV", parts))
        raise CheckpointError(f"{path}: split attention '{block}' has unequal {kind}s: {shapes}")
    return torch.cat(parts, dim=0)
