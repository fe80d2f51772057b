"""The unlearning objectives of the classifier family, as the protocol's code does them
(OPTML-Group/Unlearn-Saliency, ``Classification/``; the code of the published runs is commit ac880a2,
the file:line notes below are of it unless they say otherwise).

- ``ce``: cross-entropy on the chosen subset (original, retrain, FT on Dr: ``unlearn/FT.py`` FT_iter,
  ``criterion(output, target)``; NegMerge's fine-tunes on Df);
- ``ascent``: minus the cross-entropy (GA on Df: ``unlearn/GA.py`` ``loss = -criterion(...)``);
- ``wrong-labels``: cross-entropy against a label drawn uniformly among the C-1 wrong classes, fresh
  for every example at every step (this tool's earlier random-label baseline);
- ``random-labels``: the published RL (``unlearn/RL.py`` 74-122, the CIFAR-10/SVHN path): every epoch
  one pass over Df with labels drawn uniformly over all C classes, fresh for every batch
  (``torch.randint(0, num_classes, ...)``, line 90; a draw may be the true label), then one pass over
  Dr with the true labels; one optimizer step per batch of either pass;
- ``salun``: ``random-labels`` with only the salient weights trained (``generate_mask.py``,
  ``saliency_mask`` below): each step's gradients are multiplied by the mask before the optimizer
  step (RL.py 99-102, 117-120), so weight decay and momentum still move the weights outside it, as
  in the published runs; ``saliency_freeze`` holds them at their start values and clears their
  momentum after every step instead (the code's later fix, a6e89fd, RL.py 17-34);
- ``l1-sparse``: ``ce`` plus ``alpha_e * ||theta||_1`` over every parameter (``unlearn/FT.py`` FT_l1,
  ``l1_regularization``: all of ``model.parameters()``), alpha_e = alpha * (1 - e / E) in epoch e
  (0-based) of E (FT.py 92-100, with ``--no-l1-epochs`` at its default 0); the recipe trains on Dr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError

OBJECTIVES = ("ce", "ascent", "wrong-labels", "random-labels", "salun", "l1-sparse")
FORGET_THEN_RETAIN = ("random-labels", "salun")  # each epoch: Df with random labels, then Dr
OWN_SETTINGS = {"saliency_fraction": "salun", "saliency_freeze": "salun", "l1_alpha": "l1-sparse"}


@dataclass(frozen=True)
class Pass:
    """One pass of an epoch: the examples, and the labels they are trained against."""

    indices: Sequence[int]
    labels: str = "true"  # true | wrong (a wrong class per example) | random (any class, uniformly)


def check(options) -> None:
    """The data a (known) objective needs and the settings of other objectives left at their defaults,
    before anything is read (``options``: a FinetuneOptions)."""
    objective = options.objective
    if objective in FORGET_THEN_RETAIN:
        if options.forget_split is None:
            raise UsageError(f"{errors.option('objective')} {objective} trains on Df then Dr: it needs "
                             f"{errors.option('forget_split')} (made by `negmerge split`)")
        if options.subset != "all":
            raise UsageError(f"{errors.option('objective')} {objective} trains on Df (random labels) then Dr every "
                             f"epoch; leave {errors.option('subset')} at all")
    defaults = {spec.name: spec.default for spec in fields(options)}
    for name, owner in OWN_SETTINGS.items():
        if objective != owner and getattr(options, name) != defaults[name]:
            raise UsageError(f"{errors.option(name)} is for {errors.option('objective')} {owner}")


def check_milestones(schedule: str, milestones: Sequence[int]) -> None:
    if milestones and schedule != "step":
        raise UsageError(f"{errors.option('milestones')} needs {errors.option('schedule')} step")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise UsageError(f"{errors.option('milestones')} {','.join(map(str, milestones))}: must be increasing epochs")


def passes(objective: str, indices: Sequence[int], forget_indices: Optional[Sequence[int]]) -> list[Pass]:
    """An epoch's passes: ``indices`` (Dr for the Df-then-Dr objectives), after Df where they need it."""
    if objective in FORGET_THEN_RETAIN:
        if forget_indices is None:
            raise UsageError(f"{errors.option('objective')} {objective} needs the forget set")
        return [Pass(forget_indices, "random"), Pass(indices)]
    return [Pass(indices, "wrong" if objective == "wrong-labels" else "true")]


def relabel(labels: torch.Tensor, kind: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":  # RL.py:90, one draw per example of the batch
        return torch.randint(0, num_classes, labels.shape, generator=generator)
    if kind == "wrong":  # shift the true label by 1..C-1 (mod C): uniform over the wrong classes
        return (labels + torch.randint(1, num_classes, labels.shape, generator=generator)) % num_classes
    return labels


def loss(model, logits: torch.Tensor, labels: torch.Tensor, settings, epoch: int, epochs: int) -> torch.Tensor:
    """The objective's loss of one batch (``settings``: a ClassifierSettings)."""
    value = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    if settings.objective == "ascent":
        return -value
    if settings.objective == "l1-sparse":
        alpha = l1_coefficient(settings.l1_alpha, epoch, epochs)
        if alpha:
            value = value + alpha * sum(p.abs().sum() for p in model.parameters())
    return value


def l1_coefficient(alpha: float, epoch: int, epochs: int) -> float:
    """FT.py 92-100: alpha * (1 - epoch / epochs), 0 from the last epoch's end on."""
    return alpha * (1 - epoch / epochs) if epoch < epochs else 0.0


def saliency_mask(model, dataset, indices: Sequence[int], fraction: float, batch_size: int, device,
                  workers: int = 0) -> dict[str, torch.Tensor]:
    """``generate_mask.py`` save_gradient_ratio: the gradient of minus the cross-entropy (the batch
    mean, BatchNorm in eval mode, line 25) summed over the batches of Df, for every parameter; its
    magnitude ranked over the whole model (lines 57-64), and the top ``fraction`` of all elements
    (int(N * fraction) of them) set to 1. Returns one 0/1 tensor per parameter name."""
    was_training = model.training
    model.eval()
    named = list(model.named_parameters())
    sums = [torch.zeros_like(p) for _, p in named]
    for inputs, labels in DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=workers):
        model.zero_grad(set_to_none=True)
        (-F.cross_entropy(model(inputs.to(device)), labels.to(device))).backward()
        for total, (_, p) in zip(sums, named):
            if p.grad is not None:
                total += p.grad
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    magnitudes = torch.cat([s.abs().flatten() for s in sums])
    flat = torch.zeros_like(magnitudes)
    flat[torch.topk(magnitudes, int(magnitudes.numel() * fraction), sorted=False).indices] = 1
    return {name: part.view_as(p) for (name, p), part in zip(named, flat.split([p.numel() for _, p in named]))}


class MaskedUpdate:
    """SalUn's mask around each optimizer step: gradients outside the mask zeroed before it; with
    ``freeze``, the weights outside it put back and their momentum cleared after it."""

    def __init__(self, model, mask: dict[str, torch.Tensor], freeze: bool):
        self.pairs = [(p, mask[name]) for name, p in model.named_parameters()]
        self.start = [p.detach().clone() for p, _ in self.pairs] if freeze else None

    def before_step(self) -> None:
        for p, m in self.pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, optimizer) -> None:
        if self.start is None:
            return
        for (p, m), start in zip(self.pairs, self.start):
            p.mul_(m).add_(start * (1 - m))
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(m)


def epochs_of(total_steps: int, steps_per_epoch: int) -> int:
    return math.ceil(total_steps / max(steps_per_epoch, 1))
