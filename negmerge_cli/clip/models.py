"""OpenCLIP models: create by name (+ pretrained tag or local file), load and save checkpoints.

Checkpoints are full OpenCLIP state dicts in safetensors, so
``open_clip.create_model_and_transforms(name, pretrained=PATH)`` loads them directly. The tiny
configs in ``model_configs/`` (``negmerge-tiny``, ``negmerge-tiny-16``) are registered with open_clip
on first use, for tests and for machines with no network.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from negmerge_cli.core.errors import CheckpointError, NegmergeError, UsageError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False
# Random init is seeded so that every job of a sweep (and every torchrun rank) builds the same base.
INIT_SEED = 0
# Preprocessing of shipped configs that differs from open_clip's default (built-in config files
# cannot carry it): the demo model takes images in [0, 1], unnormalised.
PREPROCESS = {"negmerge-demo": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}}


def _open_clip():
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return open_clip


def shipped_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def is_model_name(name: str) -> bool:
    """Whether open_clip's registry (with our shipped configs added) knows ``name``."""
    return name in _open_clip().list_models()


def check_model_name(name: str) -> None:
    if not is_model_name(name):
        tiny = ", ".join(shipped_models())
        raise UsageError(f"unknown model '{name}' for --model (open_clip.list_models() has none; shipped tiny configs: {tiny})")


def create_model(name: str, pretrained: Optional[str] = None, device: str | torch.device = "cpu",
                 quick_gelu: Optional[bool] = None) -> torch.nn.Module:
    """An OpenCLIP model in eval mode: random (seeded), a pretrained tag, or a local checkpoint file.

    ``quick_gelu`` None builds the activation the weights were trained with (:func:`needs_quick_gelu`);
    True or False forces it."""
    open_clip = _open_clip()
    check_model_name(name)
    is_tag = bool(pretrained) and not _looks_like_path(pretrained)
    if is_tag:
        _check_tag(open_clip, name, pretrained)
    activation = needs_quick_gelu(name, pretrained) if quick_gelu is None else quick_gelu
    if is_tag:
        model = _from_tag(open_clip, name, pretrained, activation)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model = _quiet(lambda: open_clip.create_model(name, force_preprocess_cfg=PREPROCESS.get(name),
                                                          quick_gelu=activation))
        if pretrained:
            load_weights(model, pretrained, name)
    return model.to(device).eval()


def skeleton(name: str) -> torch.nn.Module:
    """The model's structure on the meta device: names and shapes, no weights, no memory."""
    open_clip = _open_clip()
    check_model_name(name)
    return _quiet(lambda: open_clip.create_model(name, device="meta"))


def needs_quick_gelu(name: str, pretrained: Optional[str] = None) -> bool:
    """Whether the weights want QuickGELU: OpenAI's CLIP weights were trained with it, but since
    open_clip 2.29 a bare model name (``ViT-B-32``) builds plain GELU even for ``pretrained="openai"``.

    A tag: open_clip's per-tag ``quick_gelu`` flag. A file: the ``negmerge.quick_gelu`` this tool
    records in every checkpoint it writes. Otherwise (random init, a file from elsewhere): the model
    config's own activation."""
    open_clip = _open_clip()
    config = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if not pretrained:
        return config
    if not _looks_like_path(pretrained):
        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", config))
    recorded = _recorded_quick_gelu(pretrained)
    return config if recorded is None else recorded


def _recorded_quick_gelu(path: str) -> Optional[bool]:
    from negmerge_cli.checkpoint import open_checkpoint
    from negmerge_cli.checkpoint.provenance import QUICK_GELU

    with open_checkpoint(path, digest=False) as checkpoint:
        value = checkpoint.metadata.get(QUICK_GELU)
    if value not in (None, "true", "false"):
        raise CheckpointError(f"{path}: metadata {QUICK_GELU} is {value!r}, expected true or false")
    return None if value is None else value == "true"


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    """What the built model actually computes (read from its modules, not from a flag)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(module, QuickGELU) for module in model.modules())


def architecture_metadata(model: torch.nn.Module) -> dict[str, str]:
    """What every later stage needs to rebuild the same architecture from a checkpoint."""
    from negmerge_cli.checkpoint.provenance import QUICK_GELU

    return {QUICK_GELU: "true" if uses_quick_gelu(model) else "false"}


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".safetensors", ".json", ".bin", ".pt", ".pth")) or Path(value).exists()


def _check_tag(open_clip, name: str, tag: str) -> None:
    tags = [t for model, t in open_clip.list_pretrained() if model == name]
    if tag not in tags:
        known = ", ".join(tags) or "none"
        raise UsageError(f"unknown --pretrained tag '{tag}' for model {name} (known tags: {known}; or give a local file)")


def _from_tag(open_clip, name: str, tag: str, quick_gelu: bool) -> torch.nn.Module:
    logging.disable(logging.ERROR)  # huggingface_hub logs every retry; the one-line error says it all
    try:
        return open_clip.create_model(name, pretrained=tag, quick_gelu=quick_gelu)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise NegmergeError(
            f"could not get pretrained weights '{tag}' for {name}: {reason} (offline? pass a local checkpoint file)"
        ) from None
    finally:
        logging.disable(logging.NOTSET)


def _quiet(make):
    """open_clip logs a warning for every random init; keep stderr for our own messages."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return make()
    finally:
        logger.setLevel(level)


def load_weights(model: torch.nn.Module, path: str | Path, model_name: str) -> None:
    """Load a full OpenCLIP state dict, with a one-line error if it does not fit the model."""
    from negmerge_cli.checkpoint import kinds, open_checkpoint

    with open_checkpoint(path, digest=False) as checkpoint:
        kinds.require_kind(checkpoint, kinds.MODEL_WEIGHTS)
        state = {name: checkpoint.read_tensor(name) for name in checkpoint.names}
    check_fits(model, state, path, model_name)
    model.load_state_dict(_with_model_scalars(model, state), strict=True)


def check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path, model_name: str) -> None:
    """Same tensor names and exact shapes: a transposed tensor with the right element count is a
    different tensor, never reshaped into place."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'"
        extra = len(missing) + len(unexpected) - 1
        more = f" and {extra} more" if extra else ""
        raise CheckpointError(f"{path}: checkpoint does not fit model {model_name}: {what}{more}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape and not _scalar_forms(state[key], tensor):
            raise CheckpointError(
                f"{path}: checkpoint does not fit model {model_name}: tensor '{key}' has shape "
                f"{tuple(state[key].shape)}, the model needs {tuple(tensor.shape)}"
            )


def _scalar_forms(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Shapes () and (1,): how open_clip versions differ in storing logit_scale; the only shape
    difference accepted."""
    return {tuple(a.shape), tuple(b.shape)} == {(), (1,)}


def _with_model_scalars(model, state):
    expected = model.state_dict()
    return {k: v.reshape(expected[k].shape) if _scalar_forms(v, expected[k]) else v for k, v in state.items()}


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of every state tensor (safetensors refuses shared or strided storage)."""
    module = model.module if hasattr(model, "module") else model
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(model: torch.nn.Module, path: Path, metadata: dict[str, str], force: bool = False) -> Path:
    """The model's state dict, with the metadata and what rebuilding its architecture needs."""
    from negmerge_cli.checkpoint import save_state_dict

    return save_state_dict(state_dict_for_saving(model), path, metadata={**metadata, **architecture_metadata(model)},
                           force=force)


def tokenizer_for(name: str):
    return _open_clip().get_tokenizer(name)


RANDAUG_INTERPOLATIONS = ("random", "bicubic", "bilinear")


def transforms_for(model: torch.nn.Module, train: bool, randaug: Optional[str] = None,
                   crop_scale: float = 0.08, hflip: float = 0.5, interpolation: str = "random",
                   grayscale: bool = False):
    """The model's eval preprocessing; for training, open_clip's train transform or timm RandAugment.

    RandAugment uses timm's ``transforms_imagenet_train`` as the paper did (random resized crop,
    horizontal flip, then ``rand-m{m}-n{n}-mstd0.5``), with the model's size, mean and std.
    ``crop_scale`` (smallest crop area) and ``hflip`` (probability) keep timm's defaults, the
    paper's; tiny images and orientation-bound classes (digits) want gentler values.
    ``interpolation`` is timm's default ``random`` (bilinear or bicubic per call), as the release
    left it. ``grayscale`` first resizes to the model's size and makes the image 3-channel gray,
    the release's recipe for MNIST.
    """
    open_clip = _open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    if not train or not randaug:
        return image_transform_v2(cfg, is_train=train)
    from timm.data.transforms_factory import transforms_imagenet_train

    size = cfg.size if isinstance(cfg.size, int) else tuple(cfg.size)
    with _posterize_allowing_zero_bits():
        augment = transforms_imagenet_train(
            img_size=size, scale=(crop_scale, 1.0), hflip=hflip, auto_augment=randaug,
            interpolation=interpolation, mean=cfg.mean, std=cfg.std,
        )
    if not grayscale:
        return augment
    from torchvision import transforms

    shorter_side = size if isinstance(size, int) else min(size)  # the release's Resize(224)
    return transforms.Compose([transforms.Resize(shorter_side), transforms.Grayscale(num_output_channels=3), augment])


def posterize(img, bits_to_keep, **_):
    """timm's Posterize op as Pillow < 11 ran it: 0 bits kept gives a black image (Pillow >= 11
    rejects 0 bits, which timm asks for at RandAugment magnitudes m <= 2)."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # keeping 0 bits: every channel value becomes 0
    return ImageOps.posterize(img, bits_to_keep)


@contextlib.contextmanager
def _posterize_allowing_zero_bits():
    """timm's op table with :func:`posterize` while a transform is built (its ops keep the function
    they were built with), restored afterwards: nothing else in the process sees the change."""
    from timm.data import auto_augment

    names = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")
    saved = {name: auto_augment.NAME_TO_OP[name] for name in names}
    auto_augment.NAME_TO_OP.update({name: posterize for name in names})
    try:
        yield
    finally:
        auto_augment.NAME_TO_OP.update(saved)


def check_randaug(spec: str) -> None:
    """Fail early on a RandAugment string timm cannot parse."""
    import re

    from timm.data.auto_augment import rand_augment_transform

    if not re.fullmatch(r"rand(-[a-z]+\d+(\.\d+)?)+", spec):
        raise UsageError(f"--randaug '{spec}' is not a timm RandAugment string like rand-m1-n1-mstd0.5")
    try:
        rand_augment_transform(spec, {})
    except Exception as exc:  # timm raises assorted errors (AssertionError, ValueError, KeyError)
        raise UsageError(f"--randaug '{spec}' is not a timm RandAugment string like rand-m1-n1-mstd0.5 ({exc})") from None
