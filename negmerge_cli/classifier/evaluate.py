"""Running a classifier over Dr, Df and Dtest: per-sample predictions, then the unlearning metrics.

The images of each subset go through the test-time transform once and are kept in memory when
they fit the budget (``--cache-memory``), so the lambda search runs only forward passes per
lambda; a subset that does not fit is read again through a DataLoader for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from negmerge_cli.classifier.metrics import Predictions, concatenate, unlearning_metrics
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.results import UnlearningMetrics


class NonFiniteOutputs(NegmergeError):
    """NaN/Inf logits: e.g. a BatchNorm running_var pushed below zero by a negated vector."""


class SubsetImages:
    """One subset of a dataset (indices in the given order) as batches of (images, labels)."""

    def __init__(self, dataset, indices: Sequence[int], batch_size: int, workers: int, budget: int, label: str):
        self.dataset, self.indices = dataset, list(indices)
        self.batch_size, self.workers, self.budget, self.label = batch_size, workers, budget, label
        self.cached: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cached is not None:
            yield from self.cached
            return
        kept, fits = [], True
        for images, labels in self._loader():
            yield images, labels
            if fits:
                kept.append((images, labels))
                fits = _bytes(kept) / sum(len(b[1]) for b in kept) * len(self) <= self.budget
        if fits:
            self.cached = kept

    def _loader(self):
        from torch.utils.data import DataLoader, Subset

        return DataLoader(Subset(self.dataset, self.indices), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.workers)


def _bytes(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(images.numel() * images.element_size() for images, _ in batches)


@torch.no_grad()
def predict(model: torch.nn.Module, images: SubsetImages, device: torch.device, precision: str = "fp32",
            progress=None) -> Predictions:
    """Per-sample true-label confidence and correctness, in the subset's order (eval mode, no grad)."""
    from negmerge_cli.classifier.metrics import predictions_from_logits
    from negmerge_cli.training.precision import autocast

    model.eval()
    parts = []
    for batch, labels in images.batches():
        with autocast(precision, device):
            logits = model(batch.to(device, non_blocking=True))
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteOutputs(f"the model's outputs on {images.label} hold NaN or Inf")
        parts.append(predictions_from_logits(logits, labels))
        if progress is not None:
            progress(len(labels))
    return concatenate(parts)


@dataclass
class UnlearningSets:
    """Dr (index order), Df and Dtest of one forget split, ready to evaluate any number of models."""

    retain: SubsetImages
    forget: SubsetImages
    test: SubsetImages

    @classmethod
    def build(cls, data, split, batch_size: int, workers: int, budget: int) -> "UnlearningSets":
        """``data``: ClassifierData; ``split``: ForgetSplit. Dr and Df are read with the test-time
        transform (``train_eval_view``); each set gets a share of the budget by its size."""
        train = data.train_eval_view()
        retain, forget = sorted(split.retain_indices), sorted(split.forget_indices)
        test = range(len(data.test))
        total = len(retain) + len(forget) + len(test)
        share = lambda n: budget * n // max(total, 1)
        return cls(SubsetImages(train, retain, batch_size, workers, share(len(retain)), "Dr"),
                   SubsetImages(train, forget, batch_size, workers, share(len(forget)), "Df"),
                   SubsetImages(data.test, test, batch_size, workers, share(len(test)), "Dtest"))

    @property
    def counts(self) -> dict:
        return {"dr": len(self.retain), "df": len(self.forget), "dtest": len(self.test),
                "shadow_members": min(len(self.retain), len(self.test))}

    @property
    def n_images(self) -> int:
        return len(self.retain) + len(self.forget) + len(self.test)

    def evaluate(self, model: torch.nn.Module, device: torch.device, description: str,
                 precision: str = "fp32") -> UnlearningMetrics:
        from negmerge_cli.core.output import output

        with output().progress(description, total=self.n_images, unit="images") as advance:
            predictions = [predict(model, s, device, precision, advance) for s in (self.retain, self.forget, self.test)]
        return unlearning_metrics(*predictions)
