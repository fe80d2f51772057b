"""The release's linearized checkpoints (``linear_finetuned.pt``, ``linear_zeroshot.pt``): a
``LinearizedImageEncoder`` state dict that keeps its parameters by position, ``model.params.N``
(theta, trained) and ``model.params0.N`` (theta0, the expansion point), plus ``model_name``.

Position N is the N-th parameter of the release's ``ImageEncoder`` (``src/modeling.py``): the
OpenCLIP model without its text transformer, each visual ``nn.MultiheadAttention`` replaced by four
``nn.Linear`` layers Q, K, V, O in that order (``in_proj`` chunked in three; O is ``out_proj``), in
``named_parameters()`` order. :func:`release_names` rebuilds that order from the model's skeleton;
the names are then research names (``model.visual...attn.Q.weight``) that the usual plan fuses.
Nothing proves a position mapping but the weights themselves, so the converter requires theta0 to
equal the ``--pretrained`` weights exactly (a swapped Q and K, same shapes, fails there).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from negmerge_cli.core.errors import CheckpointError

_ATTN = re.compile(r"^(?P<block>visual\..+\.attn)\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$")
_RESEARCH_PREFIX = "model."


def is_linear_release(state: dict[str, object]) -> bool:
    return "model_name" in state or any(k.startswith(("model.params0.", "model.params.")) for k in state)


def release_names(skeleton: torch.nn.Module) -> list[str]:
    """The research names of the release ``ImageEncoder``'s parameters, in position order."""
    names, split_done = [], set()
    for name, _ in skeleton.named_parameters():
        if name.startswith("transformer."):  # the text transformer: deleted by ImageEncoder(keep_lang=False)
            continue
        attention = _ATTN.match(name)
        if attention is None:
            names.append(name)
        elif attention["block"] not in split_done:  # the block's first tensor stands for all four layers
            split_done.add(attention["block"])
            names += [f"{attention['block']}.{layer}.{kind}" for layer in "QKVO" for kind in ("weight", "bias")]
    return [_RESEARCH_PREFIX + n for n in names]


def by_name(state: dict[str, object], names: list[str], path: Path, which: str) -> dict[str, object]:
    """``model.{which}.N`` of ``state`` under ``names[N]``; every position present, no extra one."""
    prefix = f"model.{which}."
    positions = sorted(int(k[len(prefix):]) for k in state if k.startswith(prefix) and k[len(prefix):].isdigit())
    if positions != list(range(len(names))):
        raise CheckpointError(f"{path}: {len(positions)} '{prefix}N' tensors where the model has {len(names)} "
                              f"parameters (positions 0..{len(names) - 1}); is --model the one it was trained with?")
    return {name: state[f"{prefix}{index}"] for index, name in enumerate(names)}


def check_expansion_point(theta0: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor], path: Path,
                          pretrained_name: str) -> None:
    """theta0 (converted) must equal the pretrained weights exactly: the proof of the mapping."""
    for name, value in theta0.items():
        if not torch.equal(value, pretrained[name].to(value.dtype)):
            raise CheckpointError(f"{path}: its expansion point (model.params0) differs from --pretrained "
                                  f"{pretrained_name} at tensor '{name}': not these weights, or parameters in "
                                  "another order (e.g. Q and K swapped)")
