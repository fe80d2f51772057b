"""Fine-tuning one grid point: the image encoder against the frozen zero-shot head.

The recipe of the paper (and of task arithmetic before it): AdamW, cosine schedule with linear
warm-up (the task_vectors ``cosine_lr`` formula), gradient-norm clipping at 1.0, cross-entropy with
optional label smoothing. Only ``model.visual`` trains (less the parameters ``settings.freeze``
matches, see :mod:`negmerge_cli.clip.freeze`); the text tower and logit scale stay frozen, so a task
vector from these checkpoints is zero outside the image encoder.

Under torchrun the image encoder is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPU);
``batch_size`` is the global batch of one optimizer step, split over processes and accumulation
steps, so the same command gives the same recipe on 1 or N processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from negmerge_cli.clip import freeze, zeroshot
from negmerge_cli.clip.datasets import ImageSet
from negmerge_cli.clip.evaluate import worker_errors
from negmerge_cli.clip.linearize import LinearizedEncoder
from negmerge_cli.core.errors import NegmergeError, UsageError
from negmerge_cli.core.output import output
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.precision import autocast, gradient_scaler
from negmerge_cli.training.seeding import seed_everything

GRAD_CLIP_NORM = 1.0


@dataclass(frozen=True)
class TrainSettings:
    """One grid point's optimisation settings (the grid varies the first six)."""

    lr: float
    wd: float
    label_smoothing: float
    seed: int  # the point's training seed (sweep.GridPoint.train_seed)
    epochs: Optional[int] = None
    steps: Optional[int] = None
    batch_size: int = 128
    accum_steps: int = 1
    warmup_steps: int = 500
    workers: int = 2
    precision: str = "fp32"  # the paper's; bf16/fp16 autocast on request
    freeze: tuple[str, ...] = ()  # globs of image-encoder parameters kept at their base values
    linear: bool = False  # train the linearization around the encoder's weights at the start (clip/linearize.py)


def micro_batch_size(settings: TrainSettings, world_size: int) -> int:
    parts = world_size * settings.accum_steps
    if settings.batch_size % parts:
        raise UsageError(
            f"--batch-size {settings.batch_size} must be divisible by processes x --accum-steps ({parts})"
        )
    return settings.batch_size // parts


def effective_warmup(requested: int, total_steps: int) -> int:
    """Short runs would never leave warm-up: cap it at a quarter of the run (paper runs are unaffected)."""
    return min(requested, total_steps // 4)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """task_vectors' schedule: base_lr*(step+1)/warmup, then half-cosine from base_lr to 0."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


def train_image_encoder(model, head: torch.Tensor, data: ImageSet, settings: TrainSettings, device: torch.device,
                        ranks: Ranks, description: str = "finetune") -> dict:
    """Train ``model.visual`` in place; returns run statistics (steps, images/s, last loss)."""
    seed_everything(settings.seed + ranks.rank)
    _freeze_all_but_visual(model)
    frozen = freeze.apply(model, settings.freeze)  # before DDP and the optimizer see the parameters
    encoder = (LinearizedEncoder(model.visual) if settings.linear else model.visual).train()
    if ranks.enabled:
        ids = [device.index] if device.type == "cuda" else None
        encoder = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=ids)
    loader = _train_loader(data, settings, ranks)
    steps_per_epoch = math.ceil(len(loader) / settings.accum_steps)
    total = settings.steps if settings.steps else settings.epochs * steps_per_epoch
    warmup = effective_warmup(settings.warmup_steps, total)
    parameters = [p for p in model.visual.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.wd)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    amp = _Amp(device, settings.precision)
    head = head.to(device)

    step, epoch, images, loss_value, started = 0, 0, 0, float("nan"), time.perf_counter()
    diverged = torch.zeros((), dtype=torch.bool, device=device)  # whether any step's loss was NaN or Inf
    with output().progress(description, total) as advance, worker_errors():
        while step < total:
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            for group in _groups(loader, settings.accum_steps):
                for group_ in optimizer.param_groups:
                    group_["lr"] = cosine_lr(step, settings.lr, warmup, total)
                optimizer.zero_grad(set_to_none=True)
                loss = _accumulate(encoder, head, group, loss_fn, amp, device)
                amp.step(optimizer, parameters)
                step += 1
                images += sum(len(labels) for _, labels in group) * ranks.world_size
                diverged = diverged | ~torch.isfinite(loss)  # on the device: no wait
                if step % LOSS_READ_STEPS == 1 or step >= total:  # steps 1, 11, 21... and the last
                    loss_value = _checked_loss(loss, diverged, step, description)
                rate = images / max(time.perf_counter() - started, 1e-9)
                advance(1, note=f"loss {loss_value:.3f}  {rate:.0f} img/s")
                if step >= total:
                    break
            epoch += 1
    seconds = time.perf_counter() - started
    model.visual.eval()
    return {"steps": total, "warmup_steps": warmup, "epochs_run": epoch, "images_seen": images,
            "seconds": round(seconds, 3), "images_per_s": round(images / max(seconds, 1e-9), 2),
            "final_loss": round(loss_value, 6), "processes": ranks.world_size, **frozen}



def _freeze_all_but_visual(model) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in model.visual.parameters():
        parameter.requires_grad_(True)


def _train_loader(data: ImageSet, settings: TrainSettings, ranks: Ranks) -> DataLoader:
    micro = micro_batch_size(settings, ranks.world_size)
    if ranks.enabled:
        sampler = DistributedSampler(data, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True,
                                     seed=settings.seed)
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(settings.seed))
    return DataLoader(data, batch_size=micro, sampler=sampler, num_workers=settings.workers,
                      pin_memory=torch.cuda.is_available(), drop_last=False,
                      persistent_workers=settings.workers > 0)


def _groups(loader, size: int):
    """Micro-batches grouped by optimizer step (the last group of an epoch may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


# Steps between reads of the loss (progress note, divergence check), from the first step on. Reading
# it waits for the GPU to finish the step, so the next step's batch and kernels could not be queued.
LOSS_READ_STEPS = 10


def _checked_loss(loss: torch.Tensor, diverged: torch.Tensor, step: int, description: str) -> float:
    """The step's loss as a number, or the error if any loss so far (``diverged``) was NaN or Inf."""
    if bool(diverged):
        raise NegmergeError(f"{description}: training diverged (a loss was NaN or Inf by step {step}, the last "
                            f"{float(loss)}); nothing was saved for this point")
    return float(loss)


def _accumulate(encoder, head, group, loss_fn, amp, device) -> torch.Tensor:
    """The step's loss (on the device, not read: no wait for the GPU), its gradients accumulated."""
    total = 0.0
    for index, (images, labels) in enumerate(group):
        last = index == len(group) - 1
        # DDP all-reduces gradients on every backward; only the last micro-batch of a step needs it
        sync = contextlib.nullcontext() if last or not hasattr(encoder, "no_sync") else encoder.no_sync()
        with sync:
            with amp.autocast():
                features = encoder(images.to(device, non_blocking=True))
                loss = loss_fn(zeroshot.logits(features, head), labels.to(device, non_blocking=True)) / len(group)
            amp.backward(loss)
        total = total + loss.detach()
    return total


class _Amp:
    """The settings' precision: float32 (the paper's), or autocast to bf16/fp16 (fp16 with a
    gradient scaler)."""

    def __init__(self, device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self.scaler = gradient_scaler(precision, device)

    def autocast(self):
        return autocast(self.precision, self.device)

    def backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer, parameters) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP_NORM)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
