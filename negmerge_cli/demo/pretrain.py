"""A tiny CLIP that knows both demo tasks, trained from a seeded random init and cached.

Both towers train with a class-caption cross-entropy: each image against the zero-shot head of its
task (class names through the text tower), the same head ``finetune`` and ``eval`` build. The model
sees every texture image but only a few digits per class, so it knows digits only partly: then the
fine-tunes on digits add a lot that the model lacked, which is what negation can take away again
(the paper's Cars: 59.6% zero-shot, 27.4% after NegMerge).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from negmerge_cli.demo import tasks

MODEL = "negmerge-demo"


@dataclass(frozen=True)
class PretrainRecipe:
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    digits_per_class: int = 5
    seed: int = 0

    def cache_name(self) -> str:
        configs = Path(__file__).parent.parent / "clip" / "model_configs"
        config = "".join(p.read_text() for p in sorted(configs.glob(f"{MODEL}.*json")))
        key = json.dumps({"recipe": asdict(self), "config": config, "data": tasks.DATA_VERSION}, sort_keys=True)
        return f"{MODEL}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "negmerge_cli"


def pretrained_checkpoint(recipe: PretrainRecipe, cache_dir: Path, templates: tuple[str, ...],
                          progress=None) -> tuple[Path, bool]:
    """(path of the cached pretrained model, whether it was trained now)."""
    from negmerge_cli.checkpoint import provenance
    from negmerge_cli.clip import models

    path = cache_dir / recipe.cache_name()
    if path.exists():
        return path, False
    model = pretrain(recipe, templates, progress)
    metadata = provenance("demo-pretrain", model=MODEL, recipe=asdict(recipe))
    models.save_checkpoint(model, path, metadata, force=True)
    return path, True


def pretrain(recipe: PretrainRecipe, templates: tuple[str, ...], progress=None) -> torch.nn.Module:
    from negmerge_cli.clip import models
    from negmerge_cli.clip.train import cosine_lr
    from negmerge_cli.clip.zeroshot import text_head

    model = models.create_model(MODEL)  # seeded random init
    tokenizer = models.tokenizer_for(MODEL)
    normalize = _normalizer(model)
    generator = torch.Generator().manual_seed(recipe.seed)
    digit_images, digit_labels = _few_per_class(tasks.digits()["train"], recipe.digits_per_class, generator)
    texture = tasks.textures()["train"]
    data = {
        "digits": (normalize(digit_images), torch.tensor(digit_labels), tasks.class_names(tasks.DIGIT_CLASSES)),
        "textures": (normalize(texture.images), torch.tensor(texture.labels), tasks.class_names(tasks.TEXTURE_CLASSES)),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, recipe.lr, recipe.warmup_steps, recipe.steps)
        loss = torch.zeros(())
        for images, labels, classnames in data.values():
            picked = torch.randint(len(labels), (recipe.batch_size,), generator=generator)
            head = text_head(model, tokenizer, classnames, templates)
            features = F.normalize(model.encode_image(images[picked]), dim=-1)
            loss = loss + F.cross_entropy(features @ head.t(), labels[picked])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if progress:
            progress(step + 1, recipe.steps, float(loss.detach()))
    return model.eval()


def _few_per_class(split: tasks.Split, per_class: int, generator: torch.Generator):
    """A class-balanced handful from the part of the train split that fine-tuning trains on
    (never from the Val hold-out, which the coefficient search uses)."""
    from negmerge_cli.clip.datasets import val_split_indices

    train_indices, _ = val_split_indices(len(split.labels))
    train_indices = np.array(train_indices)
    picked = []
    for label in range(int(split.labels.max()) + 1):
        of_class = train_indices[split.labels[train_indices] == label]
        order = torch.randperm(len(of_class), generator=generator)[:per_class].numpy()
        picked.extend(of_class[order])
    picked = np.array(picked)
    return split.images[picked], split.labels[picked]


def _normalizer(model):
    """uint8 HWC images -> the model's normalised NCHW input (what its eval transform produces)."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda images: (torch.tensor(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
