"""Which model family a ``--model`` name belongs to: OpenCLIP (``clip``) or an image classifier
(``classifier``). ``finetune`` and ``eval`` dispatch on it; the sweep, vector, merge and apply
stages are shared by both."""

from __future__ import annotations

from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError

FAMILIES = ("clip", "classifier")


def family_of(model_name: str) -> str:
    """``"classifier"`` for a torchvision classifier name or one of our small-input variants,
    ``"clip"`` for an OpenCLIP name (or our shipped negmerge-* configs); UsageError otherwise."""
    from negmerge_cli.classifier.models import is_classifier_name

    if is_classifier_name(model_name):
        return "classifier"
    if _is_clip_name(model_name):
        return "clip"
    raise UsageError(
        f"unknown model '{model_name}' for {errors.option('model')} (e.g. ViT-B-32, negmerge-tiny, resnet18, "
        "resnet18-cifar, resnet8-cifar)"
    )


def _is_clip_name(name: str) -> bool:
    # open_clip's registry (with our shipped configs added) is the authority; imported lazily
    from negmerge_cli.clip.models import _open_clip

    return name in _open_clip().list_models()
