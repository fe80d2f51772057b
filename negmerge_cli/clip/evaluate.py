"""Zero-shot evaluation with images decoded and preprocessed once.

``ImageCache`` runs each image through the model's eval preprocessing up to (not including)
ToTensor + Normalize, and keeps the result as uint8 [C, H, W] (4x smaller than float) within a byte
budget; images past the budget are decoded again on every pass. Each pass then only normalises and
runs the image encoder, which is what the coefficient search repeats for every lambda.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import Compose, Normalize
from torchvision.transforms.functional import pil_to_tensor

from negmerge_cli.clip import zeroshot
from negmerge_cli.clip.datasets import ImageSet
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.core.output import output
from negmerge_cli.results import Metrics
from negmerge_cli.training.precision import autocast


@contextlib.contextmanager
def worker_errors():
    """DataLoader workers re-raise our one-line errors wrapped in a traceback text; unwrap them."""
    try:
        yield
    except NegmergeError as exc:
        text = str(exc)
        if text.startswith("Caught "):
            last = [line for line in text.splitlines() if line.strip()][-1]
            raise type(exc)(last.split(": ", 1)[-1]) from None
        raise


def split_eval_transform(transform: Compose) -> tuple[Compose, Normalize]:
    """(geometry part applied to PIL images, the final Normalize) of open_clip's eval transform."""
    steps = list(transform.transforms)
    normalize = steps[-1]
    if not isinstance(normalize, Normalize):
        raise TypeError(f"unexpected eval transform ending in {type(normalize).__name__}")
    geometry = [s for s in steps[:-1] if type(s).__name__ not in ("ToTensor", "MaybeToTensor")]
    return Compose(geometry), normalize


class _AsUint8:
    def __init__(self, geometry: Compose):
        self.geometry = geometry

    def __call__(self, image):
        return pil_to_tensor(self.geometry(image).convert("RGB"))


@dataclass
class ImageCache:
    dataset: ImageSet  # with the uint8 transform
    cached_images: torch.Tensor  # uint8 [K, C, H, W], the first K images
    labels: torch.Tensor  # int64 [N], every image
    normalize: Normalize
    workers: int

    @classmethod
    def build(cls, dataset: ImageSet, eval_transform: Compose, budget_bytes: int, workers: int = 0,
              batch_size: int = 256) -> "ImageCache":
        geometry, normalize = split_eval_transform(eval_transform)
        data = dataset.with_transform(_AsUint8(geometry))
        images, labels, kept = [], [], 0
        with output().progress(f"decode {dataset.label}", len(data)) as advance, worker_errors():
            for batch, batch_labels in _loader(data, batch_size, workers):
                labels.append(batch_labels)
                per_image = batch[0].numel()
                room = max(0, (budget_bytes - kept * per_image) // per_image)
                if room:
                    images.append(batch[:room])
                    kept += min(room, len(batch))
                advance(len(batch))
        if not labels:
            raise NegmergeError(f"{dataset.label}: no images in this split")
        empty = torch.empty((0,), dtype=torch.uint8)
        return cls(data, torch.cat(images) if images else empty, torch.cat(labels).long(), normalize, workers)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_cached(self) -> int:
        return len(self.cached_images)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Normalised float batches in dataset order: cached first, then the rest decoded anew."""
        for start in range(0, self.num_cached, batch_size):
            yield self._normalized(self.cached_images[start : start + batch_size])
        if self.num_cached < len(self):
            rest = Subset(self.dataset, range(self.num_cached, len(self)))
            with worker_errors():
                for batch, _ in _loader(rest, batch_size, self.workers):
                    yield self._normalized(batch)

    def _normalized(self, batch: torch.Tensor) -> torch.Tensor:
        return self.normalize(batch.float().div_(255))


def _loader(dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


@torch.no_grad()
def image_features(model, cache: ImageCache, batch_size: int = 256, device=None,
                   description: str = "eval", precision: str = "fp32", encode=None) -> torch.Tensor:
    """One full pass of the image encoder over a cached dataset: [N, embed_dim] float32.
    ``encode``: images -> features instead of ``model.encode_image`` (e.g. a linearized encoder)."""
    device = device or next(model.parameters()).device
    encode = encode or model.encode_image
    features = []
    with output().progress(description, len(cache)) as advance:
        for batch in cache.batches(batch_size):
            with autocast(precision, device):
                features.append(encode(batch.to(device, non_blocking=True)).float().cpu())
            advance(len(batch))
    return torch.cat(features)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """top-1, top-5 (top-C when fewer than 5 classes) and mean per-class recall, as fractions."""
    num_classes = logits.shape[1]
    top = logits.topk(min(5, num_classes), dim=1).indices
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=1)
    present = labels.unique()
    recalls = torch.stack([hit1[labels == c].float().mean() for c in present])
    return Metrics(acc1=hit1.float().mean().item(), acc5=hit5.float().mean().item(),
                   mean_per_class_recall=recalls.mean().item())


def evaluate_cached(model, cache: ImageCache, head: torch.Tensor, batch_size: int = 256, device=None,
                    description: str = "eval", precision: str = "fp32", encode=None) -> Metrics:
    features = image_features(model, cache, batch_size, device, description, precision, encode)
    return classification_metrics(zeroshot.logits(features, head.cpu()), cache.labels)
