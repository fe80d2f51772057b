"""Training one grid point of a classifier: the unlearning literature's recipe.

Defaults of the classifier family (the CLIP family keeps AdamW + warm-up cosine): SGD with momentum
0.9, weight decay on every parameter, cosine schedule (or ``step``: x0.1 at the given epoch
``milestones``, or at 50% and 75% of the steps without them), optional linear warm-up, no gradient
clipping, BatchNorm in train mode. Single process. The objectives (``ce``, ``ascent``,
``wrong-labels``, ``random-labels``, ``salun``, ``l1-sparse``) are in
:mod:`negmerge_cli.classifier.objectives`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from negmerge_cli.classifier import objectives
from negmerge_cli.classifier.recipe import FINETUNE_DEFAULTS as _RECIPE
from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError
from negmerge_cli.training.options import FinetuneOptions
from negmerge_cli.training.seeding import seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
OBJECTIVES = objectives.OBJECTIVES
MOMENTUM = 0.9
GAMMA = 0.1  # the step schedule's factor; the protocol's MultiStepLR has it fixed (unlearn/impl.py:95-97)


# What a run leaves unset takes the command's defaults, declared once: the family's recipe and
# `finetune`'s options (a library caller gets what the command line gets)
_OPTION = {option.name: option.default for option in fields(FinetuneOptions)}


@dataclass(frozen=True)
class ClassifierSettings:
    """One grid point's training settings."""

    lr: float
    wd: float
    label_smoothing: float
    seed: int
    epochs: int | None
    steps: int | None
    batch_size: int
    warmup_steps: int = _RECIPE.warmup_steps
    optimizer: str = _RECIPE.optimizer
    schedule: str = _OPTION["schedule"]
    objective: str = _OPTION["objective"]
    workers: int = 0  # data loaded in the process (the command starts FinetuneOptions.workers)
    milestones: tuple[int, ...] = tuple(_OPTION["milestones"])  # step schedule: x0.1 from these 0-based epochs on
    saliency_fraction: float = _OPTION["saliency_fraction"]  # salun: the share of all weights it trains
    saliency_freeze: bool = _OPTION["saliency_freeze"]  # salun: hold the weights outside the mask too
    l1_alpha: float = _OPTION["l1_alpha"]  # l1-sparse: the penalty's coefficient in the first epoch


def check_choices(optimizer: str, schedule: str, objective: str) -> None:
    for name, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("schedule", schedule, SCHEDULES),
                                 ("objective", objective, OBJECTIVES)):
        if value not in allowed:
            raise UsageError(f"{errors.option(name)} {value!r}: must be one of {', '.join(allowed)}")


def learning_rate(step: int, total: int, settings: ClassifierSettings, steps_per_epoch: int = 1) -> float:
    """The rate of optimizer step ``step`` (0-based) of ``total``. With ``milestones``, the
    protocol's MultiStepLR stepped once per epoch (main_train.py:82-83, 120; unlearn/impl.py:95-114):
    in epoch e the rate is lr * 0.1 ** (the number of milestones <= e)."""
    warmup = min(settings.warmup_steps, total // 4)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    if settings.schedule == "step" and settings.milestones:
        return settings.lr * GAMMA ** sum(step // steps_per_epoch >= m for m in settings.milestones)
    if settings.schedule == "step":
        return settings.lr * (GAMMA ** sum(step >= total * f for f in (0.5, 0.75)))
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * settings.lr


def train_classifier(model, dataset, indices, settings: ClassifierSettings, device, description: str = "",
                     forget_indices: Optional[Sequence[int]] = None) -> dict:
    """Train ``model`` in place on ``dataset[indices]`` (Dr for ``random-labels`` / ``salun``, which
    also take ``forget_indices``, Df); run statistics (steps, images/s, last loss)."""
    from negmerge_cli.core.output import output

    seed_everything(settings.seed)
    model.to(device)
    loaders = [(_loader(dataset, part.indices, settings, settings.seed + 2 * k), part.labels)
               for k, part in enumerate(objectives.passes(settings.objective, indices, forget_indices))]
    per_epoch = sum(len(loader) for loader, _ in loaders)
    if not per_epoch:
        raise UsageError("nothing to train on: the subset is empty")
    total = settings.steps or settings.epochs * per_epoch
    epochs = objectives.epochs_of(total, per_epoch)
    _note_late_milestones(settings, epochs)
    update = None
    if settings.objective == "salun":
        mask = objectives.saliency_mask(model, dataset, forget_indices, settings.saliency_fraction,
                                        settings.batch_size, device, settings.workers)
        update = objectives.MaskedUpdate(model, mask, settings.saliency_freeze)
    optimizer = _optimizer(model, settings)
    labels_generator = torch.Generator().manual_seed(settings.seed + 1)
    model.train()
    step, images, last_loss, started = 0, 0, torch.tensor(float("nan")), time.perf_counter()
    with output().progress(description or "train", total=total) as advance:
        for epoch, kind, inputs, labels in _batches(loaders, total):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, settings, per_epoch)
            logits = model(inputs.to(device, non_blocking=True))
            targets = objectives.relabel(labels, kind, logits.shape[1], labels_generator).to(device)
            loss = objectives.loss(model, logits, targets, settings, epoch, epochs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if update is not None:
                update.before_step()
            optimizer.step()
            if update is not None:
                update.after_step(optimizer)
            # kept on the device: reading it every step would wait for the GPU each time
            step, images, last_loss = step + 1, images + len(labels), loss.detach()
            advance(1)
    last_loss = float(last_loss)
    if not math.isfinite(last_loss):
        raise errors.NegmergeError(f"training diverged (loss {last_loss}); lower {errors.option('lr')}")
    seconds = time.perf_counter() - started
    return {"steps": total, "images_seen": images, "last_loss": round(last_loss, 6), "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 2)}


def _loader(dataset, indices, settings: ClassifierSettings, seed: int) -> DataLoader:
    # persistent: workers started once per run, not once per epoch (Df fine-tunes are many short epochs)
    return DataLoader(Subset(dataset, list(indices)), batch_size=settings.batch_size, shuffle=True,
                      num_workers=settings.workers, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=settings.workers > 0, pin_memory=torch.cuda.is_available())


def _batches(loaders, total: int):
    """(epoch, label kind, inputs, labels) of each step: every epoch each pass in turn, ``total`` in all."""
    step, epoch = 0, 0
    while True:
        for loader, kind in loaders:
            for inputs, labels in loader:
                yield epoch, kind, inputs, labels
                step += 1
                if step >= total:
                    return
        epoch += 1


def _note_late_milestones(settings: ClassifierSettings, epochs: int) -> None:
    late = [m for m in settings.milestones if m >= epochs] if settings.schedule == "step" else []
    if late:  # the protocol's 5-10 epoch unlearning under 91,136: a constant rate, as published
        from negmerge_cli.core.output import output

        all_late = len(late) == len(settings.milestones)
        rate = f"the rate stays at {errors.option('lr')}" if all_late else "they are never reached"
        output().log(f"milestones {','.join(map(str, late))} are past the run's {epochs} epochs: {rate}")


def _optimizer(model, settings: ClassifierSettings):
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=MOMENTUM, weight_decay=settings.wd)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.wd)


@torch.no_grad()
def accuracy(model, dataset, indices=None, device="cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``dataset`` (or the ``indices`` of it)."""
    data = dataset if indices is None else Subset(dataset, list(indices))
    was_training = model.training
    model.eval()
    correct = seen = 0
    for inputs, labels in DataLoader(data, batch_size=batch_size):
        correct += int((model(inputs.to(device)).argmax(1).cpu() == labels).sum())
        seen += len(labels)
    model.train(was_training)
    return correct / max(seen, 1)


@torch.no_grad()
def mean_loss(model, dataset, indices, device="cpu", batch_size: int = 256) -> float:
    """Mean cross-entropy (eval mode) on ``dataset[indices]``."""
    model.eval()
    total = seen = 0.0
    for inputs, labels in DataLoader(Subset(dataset, list(indices)), batch_size=batch_size):
        total += float(F.cross_entropy(model(inputs.to(device)), labels.to(device), reduction="sum"))
        seen += len(labels)
    return total / max(seen, 1)


@torch.no_grad()
def test_metrics(model, dataset, num_classes: int, device="cpu", batch_size: int = 256):
    """The sweep's per-point Metrics on ``dataset``: top-1, top-5 (top-C below 5 classes) and mean
    per-class recall, as for the CLIP family."""
    from negmerge_cli.results import Metrics

    model.eval()
    top1 = top5 = 0
    hits, counts = torch.zeros(num_classes), torch.zeros(num_classes)
    for inputs, labels in DataLoader(dataset, batch_size=batch_size):
        ranked = model(inputs.to(device)).topk(min(5, num_classes), dim=1).indices.cpu()
        correct = ranked[:, 0] == labels
        top1 += int(correct.sum())
        top5 += int((ranked == labels[:, None]).any(1).sum())
        hits.index_add_(0, labels, correct.float())
        counts.index_add_(0, labels, torch.ones(len(labels)))
    seen = max(int(counts.sum()), 1)
    present = counts > 0
    return Metrics(acc1=top1 / seen, acc5=top5 / seen, mean_per_class_recall=float((hits[present] / counts[present]).mean()))
