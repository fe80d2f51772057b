"""torchvision classifiers, never downloading weights, and their small-input variants.

``NAME-cifar`` (ResNets): the unlearning literature's CIFAR ResNet: a 3x3 stem conv with stride 1
and padding 1, no max-pool. ``resnet8-cifar``: ResNet(BasicBlock, [1, 1, 1, 1]) small-input, a
test/demo size. Checkpoints carry ``negmerge.family``, ``negmerge.model`` and
``negmerge.num_classes``.
"""

from __future__ import annotations

from pathlib import Path

from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.errors import CheckpointError, UsageError, option

TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "swin_t")
SMALL_INPUT = ("resnet8-cifar", "resnet18-cifar", "resnet34-cifar", "resnet50-cifar")
CLASSIFIER_MODELS = TORCHVISION_MODELS + SMALL_INPUT
FAMILY, MODEL, NUM_CLASSES = PREFIX + "family", PREFIX + "model", PREFIX + "num_classes"


def is_classifier_name(name: str) -> bool:
    return name in CLASSIFIER_MODELS


def create_classifier(name: str, num_classes: int):
    import torch
    from torchvision.models import get_model
    from torchvision.models.resnet import BasicBlock, ResNet

    if name not in CLASSIFIER_MODELS:
        raise UsageError(f"{option('model')} {name!r}: unknown classifier (e.g. {', '.join(CLASSIFIER_MODELS[:6])})")
    if name == "resnet8-cifar":
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    else:
        model = get_model(name.removesuffix("-cifar"), weights=None, num_classes=num_classes)
    if name.endswith("-cifar"):  # 32-pixel inputs: keep the resolution in the stem
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


def classifier_metadata(name: str, num_classes: int) -> dict[str, str]:
    return {FAMILY: "classifier", MODEL: name, NUM_CLASSES: str(num_classes)}


def load_classifier(name: str, num_classes: int, path: str | Path, device):
    """The model with the checkpoint's weights; a class count or architecture that does not match
    is refused with one line naming the file and the tensor."""
    from negmerge_cli.checkpoint import load_state_dict

    model = create_classifier(name, num_classes)
    state = load_state_dict(path)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"{path}: tensor '{key}' of {name} is missing (not a {name} checkpoint?)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            if key.endswith(("fc.weight", "fc.bias", "head.weight", "head.bias")) or key.startswith("classifier."):
                raise CheckpointError(f"{path}: {key} has {state[key].shape[0]} rows; {option('num_classes')} is "
                                      f"{num_classes}")
            raise CheckpointError(f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}; {name} needs "
                                  f"{tuple(tensor.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: tensor '{extra[0]}' is not part of {name}")
    model.load_state_dict(state)
    return model.to(device).eval()
