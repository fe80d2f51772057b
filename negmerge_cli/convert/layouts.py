"""Key layouts of the research checkpoints, mapped to OpenCLIP's state-dict names (no I/O).

The task-arithmetic line of code saves ``ImageEncoder`` modules: the OpenCLIP model sits in the
attribute ``model``, so every key starts with ``model.``. The NegMerge release also replaces each
visual ``nn.MultiheadAttention`` by ``src.modeling.CustomMultiheadAttention``, four ``nn.Linear``
layers named ``Q``, ``K``, ``V`` and ``O`` (keys ``...attn.Q.weight``, ``...attn.Q.bias``...), made
by chunking ``in_proj_weight``/``in_proj_bias`` in three along dim 0. Fusing them back is the exact
inverse: concatenate Q, K, V in that order (how ``nn.MultiheadAttention`` splits its input
projection), and O is ``out_proj``.

A conversion is planned from SOURCE's names alone: :func:`plan` gives every source tensor the
:class:`Part` of one OpenCLIP tensor it holds (all of it, its transpose, or the Q, K or V third of
an attention input projection), refusing two source tensors for one part. ``fit.check_source`` then
checks every value against the model before :func:`assemble` does any arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from negmerge_cli.core.errors import CheckpointError

OPEN_CLIP = "open_clip"
SPLIT_QKVO = "split-qkvo"

WHOLE, TRANSPOSED = "whole", "transposed"
THIRDS = ("Q", "K", "V")  # the rows of an attention input projection, in nn.MultiheadAttention's order

_SPLIT = re.compile(r"^(?P<block>.+\.attn)\.(?P<part>[QKVO])\.(?P<kind>weight|bias)$")
_RESEARCH_PREFIX = "model."


@dataclass(frozen=True)
class Part:
    """Where one source tensor goes: OpenCLIP tensor ``target``, as ``form`` (WHOLE, TRANSPOSED, or
    one of THIRDS: that third of ``target``'s rows)."""

    target: str
    form: str


def research_names(names: list[str]) -> dict[str, str]:
    """OpenCLIP names (split attention still split) of an ImageEncoder's or a bare OpenCLIP model's keys."""
    if names and all(k.startswith(_RESEARCH_PREFIX) for k in names):
        return {k: k[len(_RESEARCH_PREFIX):] for k in names}
    return {k: k for k in names}


def plan(renamed: dict[str, str], path: Path, transposed: frozenset[str] = frozenset()) -> dict[str, Part]:
    """The Part of every source tensor, from ``renamed`` (source name -> OpenCLIP name, split
    attention as ``X.attn.{Q,K,V,O}.*``); ``transposed``: the source names stored transposed.

    Two source tensors for one part (two naming schemes in one file, or a block stored both fused
    and split) are refused: keeping either would silently drop the other."""
    parts: dict[str, Part] = {}
    holders: dict[str, dict[str, str]] = {}  # target -> form -> the source tensor holding it
    for source, name in renamed.items():
        part = _part(name, source in transposed)
        held = holders.setdefault(part.target, {})
        # a target is one whole (or transposed) tensor, or its three thirds, each exactly once
        if held and (part.form in held or not {part.form, *held} <= set(THIRDS)):
            other = held.get(part.form) or next(iter(held.values()))
            raise CheckpointError(
                f"{path}: tensors '{other}' and '{source}' both hold '{part.target}' (two naming schemes "
                "or attention layouts for one weight); keep one of them")
        held[part.form] = source
        parts[source] = part
    return parts


def _part(name: str, transposed: bool) -> Part:
    match = _SPLIT.match(name)
    if match is None:
        return Part(name, TRANSPOSED if transposed else WHOLE)
    block, part, kind = match["block"], match["part"], match["kind"]
    if part == "O":
        return Part(f"{block}.out_proj.{kind}", WHOLE)
    return Part(f"{block}.in_proj_{kind}", part)


def layout_of(parts: dict[str, Part]) -> str:
    return SPLIT_QKVO if any(p.form in THIRDS for p in parts.values()) else OPEN_CLIP


def assemble(tensors: dict[str, torch.Tensor], parts: dict[str, Part],
             expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP tensors from source tensors already checked against the model (``fit.check_source``):
    renamed, transposed, split attention fused (``cat(Q, K, V)``), and each in the model's shape."""
    whole: dict[str, torch.Tensor] = {}
    thirds: dict[str, dict[str, torch.Tensor]] = {}
    for source, part in parts.items():
        tensor = tensors[source].detach()
        if part.form in THIRDS:
            thirds.setdefault(part.target, {})[part.form] = tensor
        else:
            tensor = tensor.t().contiguous() if part.form == TRANSPOSED else tensor
            whole[part.target] = tensor.reshape(expected[part.target].shape)  # () vs (1,): logit_scale
    for target, split in thirds.items():
        whole[target] = torch.cat([split[third] for third in THIRDS], dim=0)
    return whole
