"""The registry of model families: which family a ``--model`` name belongs to. ``finetune`` and
``eval`` reach a family only through here; vector, merge and apply need none."""

from __future__ import annotations

from negmerge_cli.classifier.family import ClassifierFamily
from negmerge_cli.clip.family import ClipFamily
from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError
from negmerge_cli.training.family import Family

# Asked in this order: a classifier name is checked without importing open_clip (slow to import).
FAMILIES: dict[str, Family] = {family.name: family for family in (ClassifierFamily(), ClipFamily())}


def family_for(model: str) -> Family:
    """The family that knows ``model``; UsageError naming examples of both otherwise."""
    for family in FAMILIES.values():
        if family.owns(model):
            return family
    raise UsageError(
        f"unknown model '{model}' for {errors.option('model')} (e.g. ViT-B-32, negmerge-tiny, resnet18, "
        "resnet18-cifar, resnet8-cifar)"
    )


def family_of(model: str) -> str:
    """The name of ``model``'s family: ``"clip"`` or ``"classifier"``."""
    return family_for(model).name
