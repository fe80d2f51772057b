"""Training one grid point of a classifier: the unlearning literature's recipe.

Defaults of the classifier family (the CLIP family keeps AdamW + warm-up cosine): SGD with momentum
0.9, weight decay on every parameter, cosine schedule (or ``step``: x0.1 at 50% and 75% of the
steps), optional linear warm-up, no gradient clipping, BatchNorm in train mode. Single process.

Objectives (``--objective``) on the chosen subset:

- ``ce``: cross-entropy with the point's label smoothing (original, retrain, fine-tune on Dr, the
  NegMerge fine-tunes on Df);
- ``ascent``: gradient ascent, i.e. minimise minus the cross-entropy (the GA baseline);
- ``random-labels``: cross-entropy against a label drawn uniformly among the C-1 wrong classes,
  fresh for every example at every step (the RL baseline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError
from negmerge_cli.training.seeding import seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
OBJECTIVES = ("ce", "ascent", "random-labels")
MOMENTUM = 0.9


@dataclass(frozen=True)
class ClassifierSettings:
    lr: float
    wd: float
    label_smoothing: float
    seed: int
    epochs: int | None
    steps: int | None
    batch_size: int
    warmup_steps: int = 0
    optimizer: str = "sgd"
    schedule: str = "cosine"
    objective: str = "ce"
    workers: int = 0


def check_choices(optimizer: str, schedule: str, objective: str) -> None:
    for name, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("schedule", schedule, SCHEDULES),
                                 ("objective", objective, OBJECTIVES)):
        if value not in allowed:
            raise UsageError(f"{errors.option(name)} {value!r}: must be one of {', '.join(allowed)}")


def learning_rate(step: int, total: int, settings: ClassifierSettings) -> float:
    """The rate of optimizer step ``step`` (0-based) of ``total``."""
    warmup = min(settings.warmup_steps, total // 4)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    if settings.schedule == "step":
        return settings.lr * (0.1 ** sum(step >= total * f for f in (0.5, 0.75)))
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * settings.lr


def objective_loss(logits: torch.Tensor, labels: torch.Tensor, settings: ClassifierSettings,
                   generator: torch.Generator) -> torch.Tensor:
    if settings.objective == "random-labels":
        # a uniformly random wrong class: shift the label by 1..C-1 (mod C)
        shift = torch.randint(1, logits.shape[1], labels.shape, generator=generator).to(labels.device)
        labels = (labels + shift) % logits.shape[1]
    loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    return -loss if settings.objective == "ascent" else loss


def train_classifier(model, dataset, indices, settings: ClassifierSettings, device, description: str = "") -> dict:
    """Train ``model`` in place on ``dataset[indices]``; run statistics (steps, images/s, last loss)."""
    from negmerge_cli.core.output import output

    seed_everything(settings.seed)
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=settings.batch_size, shuffle=True,
                        num_workers=settings.workers, generator=torch.Generator().manual_seed(settings.seed))
    total = settings.steps or settings.epochs * len(loader)
    optimizer = _optimizer(model, settings)
    labels_generator = torch.Generator().manual_seed(settings.seed + 1)
    model.to(device).train()
    step, images, last_loss, started = 0, 0, float("nan"), time.perf_counter()
    with output().progress(description or "train", total=total) as advance:
        while step < total:
            for inputs, labels in loader:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total, settings)
                logits = model(inputs.to(device, non_blocking=True))
                loss = objective_loss(logits, labels.to(device), settings, labels_generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, images, last_loss = step + 1, images + len(labels), float(loss.detach())
                advance(1)
                if step >= total:
                    break
    if not math.isfinite(last_loss):
        raise errors.NegmergeError(f"training diverged (loss {last_loss}); lower {errors.option('lr')}")
    seconds = time.perf_counter() - started
    return {"steps": total, "images_seen": images, "last_loss": round(last_loss, 6), "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 2)}


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
