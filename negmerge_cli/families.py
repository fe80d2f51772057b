"""Which model family a ``--model`` name belongs to: ``clip`` (OpenCLIP) or ``classifier``
(torchvision classifiers and their small-input variants). No torch import."""

from __future__ import annotations


def family_of(model_name: str) -> str:
    from negmerge_cli.classifier.models import is_classifier_name

    # OpenCLIP names are checked (with a one-line error) by the CLIP code itself: it knows them
    return "classifier" if is_classifier_name(model_name) else "clip"
