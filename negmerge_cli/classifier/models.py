"""Classifier models: torchvision's classifiers (``resnet18``, ``vgg16_bn``...) built with random
weights (never downloaded), and small-input variants for 32-px data (``<resnet>-cifar``).

``resnet18-cifar`` is the unlearning literature's CIFAR ResNet-18: torchvision's ResNet with a 3x3
stride-1 stem and no max-pool, so a 32-px image keeps 32x32 feature maps in the first stage.
``resnet8-cifar`` (one BasicBlock per stage, stage widths 16/32/64/128 instead of 64..512) is a
test/demo size, not a model from the papers; its tensors have torchvision ResNet's names.
"""

from __future__ import annotations

import functools
import os

from negmerge_cli.checkpoint.provenance import CLASSIFIER_KEYS
from negmerge_cli.core import errors
from negmerge_cli.core.errors import CheckpointError, UsageError

CIFAR_SUFFIX = "-cifar"
# Small-input ResNets: (block, layers) as torchvision's ResNet takes them, and the first stage's width
_CIFAR_RESNETS = {
    "resnet8": ("BasicBlock", [1, 1, 1, 1], 16),
    "resnet18": ("BasicBlock", [2, 2, 2, 2], 64),
    "resnet34": ("BasicBlock", [3, 4, 6, 3], 64),
    "resnet50": ("Bottleneck", [3, 4, 6, 3], 64),
}
CIFAR_MODELS = tuple(name + CIFAR_SUFFIX for name in _CIFAR_RESNETS)
# Metadata written by finetune into classifier checkpoints and carried by apply
FAMILY_KEY, MODEL_KEY, NUM_CLASSES_KEY = CLASSIFIER_KEYS


@functools.lru_cache(maxsize=1)
def torchvision_models() -> tuple[str, ...]:
    """torchvision's classification models (lazy: imports torchvision)."""
    from torchvision import models

    return tuple(sorted(models.list_models(module=models)))


def classifier_models() -> list[str]:
    return sorted(CIFAR_MODELS) + list(torchvision_models())


def __getattr__(name: str):
    # CLASSIFIER_MODELS is computed on first use so importing this module stays cheap
    if name == "CLASSIFIER_MODELS":
        return tuple(classifier_models())
    raise AttributeError(name)


def __dir__() -> list[str]:
    """``CLASSIFIER_MODELS`` as well (computed on first use), so that completion offers it."""
    return sorted(set(globals()) | {"CLASSIFIER_MODELS"})


def is_classifier_name(name: str) -> bool:
    return name in CIFAR_MODELS or name in torchvision_models()


def check_classifier_name(name: str) -> None:
    if not is_classifier_name(name):
        raise UsageError(
            f"{errors.option('model')} {name!r}: not a classifier model (e.g. resnet18-cifar, resnet8-cifar, resnet18, "
            "resnet50, vgg16_bn)"
        )


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"{errors.option('num_classes')} {num_classes}: a classifier needs at least 2 classes")


def create_classifier(name: str, num_classes: int):
    """A randomly initialised classifier (seed torch first for a reproducible init)."""
    check_classifier_name(name)
    check_num_classes(num_classes)
    if name in CIFAR_MODELS:
        return _cifar_resnet(name[: -len(CIFAR_SUFFIX)], num_classes)
    from torchvision import models

    return models.get_model(name, weights=None, num_classes=num_classes)


def _cifar_resnet(base: str, num_classes: int):
    import torch.nn as nn
    from torchvision.models import resnet

    block_name, layers, width = _CIFAR_RESNETS[base]
    block = getattr(resnet, block_name)
    model = _resnet_of_width(resnet, block, layers, num_classes, width)
    # the small-input stem: 3x3 stride 1, no max-pool (32-px images would otherwise shrink to 8x8 at once)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _resnet_of_width(resnet, block, layers, num_classes: int, width: int):
    """torchvision's ResNet with stage widths ``width`` x (1, 2, 4, 8) (64 is torchvision's own)."""
    if width == 64:
        return resnet.ResNet(block, layers, num_classes=num_classes)
    import torch.nn as nn

    class NarrowResNet(resnet.ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # the first stage: its input is the stem's `width` channels
                self.inplanes = width
            return super()._make_layer(block, planes * width // 64, blocks, stride, dilate)

    model = NarrowResNet(block, layers, num_classes=num_classes)
    model.bn1 = nn.BatchNorm2d(width)
    model.fc = nn.Linear(width * 8 * block.expansion, num_classes)
    return model


def architecture_metadata(name: str, num_classes: int) -> dict[str, str]:
    return {FAMILY_KEY: "classifier", MODEL_KEY: name, NUM_CLASSES_KEY: str(num_classes)}


def load_classifier(name: str, num_classes: int, path: str | os.PathLike, device="cpu"):
    """The classifier ``name`` with the weights of safetensors ``path``; one line naming the file and
    tensor when the architecture or class count does not match."""
    from negmerge_cli.checkpoint import kinds
    from negmerge_cli.checkpoint.opening import open_checkpoint

    model = create_classifier(name, num_classes)
    with open_checkpoint(path) as checkpoint:
        kinds.require_kind(checkpoint, kinds.MODEL_WEIGHTS)
        _check_recorded(checkpoint.metadata, name, num_classes, path)
        state = {key: checkpoint.read_tensor(key) for key in checkpoint.names}
    check_fits(model, state, path, name, num_classes)
    model.load_state_dict(state, strict=True)
    return model.to(device)


def _check_recorded(metadata: dict[str, str], name: str, num_classes: int, path) -> None:
    recorded_model, recorded_classes = metadata.get(MODEL_KEY), metadata.get(NUM_CLASSES_KEY)
    if metadata.get(FAMILY_KEY) not in (None, "classifier"):
        raise CheckpointError(f"{path}: a {metadata[FAMILY_KEY]} checkpoint, not a classifier ({errors.option('model')} {name})")
    if recorded_model is not None and recorded_model != name:
        raise CheckpointError(f"{path}: written for model {recorded_model}; {errors.option('model')} is {name}")
    if recorded_classes is not None and recorded_classes != str(num_classes):
        raise CheckpointError(
            f"{path}: written for {recorded_classes} classes; {errors.option('num_classes')} is {num_classes}")


def check_fits(model, state: dict, path, name: str, num_classes: int) -> None:
    """Exact names and shapes; the classifier head's row count is reported as a class count."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]} of model {name} is missing (another architecture?)")
    extra = [key for key in state if key not in expected]
    if extra:
        raise CheckpointError(f"{path}: tensor {extra[0]} is not part of model {name} (another architecture?)")
    for key, tensor in expected.items():
        found = state[key]
        if tuple(found.shape) != tuple(tensor.shape):
            raise CheckpointError(_shape_message(path, key, tuple(found.shape), tuple(tensor.shape), num_classes))
        if found.dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise CheckpointError(f"{path}: tensor {key} is {found.dtype}; model {name} has {tensor.dtype}")


def _shape_message(path, key: str, found: tuple, wanted: tuple, num_classes: int) -> str:
    if found[1:] == wanted[1:] and wanted and wanted[0] == num_classes:
        return f"{path}: {key} has {found[0]} rows; {errors.option('num_classes')} is {num_classes}"
    return f"{path}: tensor {key} has shape {list(found)}; the model needs {list(wanted)}"
