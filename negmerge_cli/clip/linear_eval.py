"""Evaluating linearized CLIP models: where a linear checkpoint's expansion point is, and the lambda
search that scores the whole grid from one jvp pass per image (features f0 - lambda * u)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from negmerge_cli.checkpoint import linearization
from negmerge_cli.core.errors import CheckpointError, UsageError, option


def expansion_point(path: str | Path, given: Optional[str]) -> tuple[Path, dict]:
    """theta0 of the linear checkpoint or vector ``path``: ``given`` (--linearized-around), else the
    recorded base beside it; its SHA-256 must be the recorded one. Returns (file, {"file", "sha256"})."""
    metadata = linearization.metadata_of(path)
    recorded_name, recorded_sha = metadata.get(linearization.AROUND), metadata.get(linearization.AROUND_SHA)
    if given is None and recorded_name is None:
        raise UsageError(f"{path}: linearized with no recorded expansion point; give {option('linearized_around')} FILE")
    around = Path(given) if given else Path(path).parent / recorded_name
    if not around.exists():
        raise CheckpointError(f"{path}: linearized around {recorded_name}, which is not beside it; give "
                              f"{option('linearized_around')} FILE")
    digest = linearization.expansion_point(around)[linearization.AROUND_SHA]
    if recorded_sha and digest != recorded_sha:
        raise CheckpointError(f"{around}: not the expansion point of {path} (SHA-256 {digest[:16]}..., the "
                              f"recorded one is {recorded_sha[:16]}...)")
    return around, {"file": around.name, "sha256": digest}


def base_as_expansion_point(vector: str, base: str, post_hoc: bool) -> dict:
    """{"file", "sha256"} of ``base`` after checking that it is the linear ``vector``'s recorded
    expansion point (post-hoc linearization: any base)."""
    digest = linearization.expansion_point(base)[linearization.AROUND_SHA]
    recorded = linearization.metadata_of(vector).get(linearization.AROUND_SHA)
    if recorded and digest != recorded and not post_hoc:
        raise CheckpointError(f"{base}: not the expansion point of the linear vector {vector} (SHA-256 "
                              f"{digest[:16]}..., the vector's is {recorded[:16]}...); give its base as "
                              f"{option('checkpoint')}")
    return {"file": Path(base).name, "sha256": digest}


def visual_state(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """The image encoder's tensors of checkpoint ``path``, by the encoder's own names."""
    from negmerge_cli.checkpoint import load_state_dict

    prefix = "visual."
    state = {k[len(prefix):]: v for k, v in load_state_dict(path).items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: no image-encoder tensors (visual.*) for model {model_name}")
    return state


class OnePassSearch:
    """Forget and retain accuracy of the linearized model theta0 - lambda * tau at any lambda, from
    (f0, u) computed once per image: the features at lambda are f0 - lambda * u."""

    def __init__(self, model, vector: dict[str, torch.Tensor], vector_path: str, caches, batch_size: int,
                 device, description: str = "jvp"):
        from negmerge_cli.clip.linearize import features_and_direction
        from negmerge_cli.core.output import output

        touched = [k for k, t in vector.items() if not k.startswith("visual.") and t.is_floating_point() and t.any()]
        if touched:
            raise UsageError(f"{vector_path}: a linearized search negates the image encoder only; tensor "
                             f"'{touched[0]}' is outside it")
        tau = {k[len("visual."):]: t.to(device, torch.float32) for k, t in vector.items()
               if k.startswith("visual.") and t.is_floating_point()}
        self.sets = []
        for cache in caches:
            bases, directions = [], []
            with output().progress(description, len(cache)) as advance:
                for batch in cache.batches(batch_size):
                    base, direction = features_and_direction(model.visual, tau, batch.to(device))
                    bases.append(base.float().cpu())
                    directions.append(direction.float().cpu())
                    advance(len(batch))
            self.sets.append((torch.cat(bases), torch.cat(directions), cache.labels))
        self.forward_passes = len(caches)  # one jvp pass over each set, whatever the grid

    def accuracy(self, index: int, coef: float, head: torch.Tensor) -> float:
        from negmerge_cli.clip.evaluate import classification_metrics
        from negmerge_cli.clip.zeroshot import logits

        base, direction, labels = self.sets[index]
        return classification_metrics(logits(base - coef * direction, head.cpu()), labels).acc1
