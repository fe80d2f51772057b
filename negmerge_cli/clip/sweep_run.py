"""The CLIP family's sweep: the image encoder fine-tuned against the frozen zero-shot head of the
training classes, one checkpoint per grid point, each measured on Val. The record loop around the
points is the shared :func:`negmerge_cli.training.sweep_runner.run_sweep`."""

from __future__ import annotations

from typing import Optional

import torch

from negmerge_cli.core.errors import option
from negmerge_cli.core.output import output
from negmerge_cli.results import Metrics
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.family import TrainedPoint
from negmerge_cli.training.options import FinetuneOptions
from negmerge_cli.training.sweep import NO_AUGMENTATION, GridPoint, SweepFolder, identity_of


class ClipTrainer:
    """The state one CLIP ``finetune`` call shares between its grid points (a
    :class:`~negmerge_cli.training.family.PointTrainer`)."""

    def __init__(self, options: FinetuneOptions, ranks: Ranks):
        from negmerge_cli.clip import datasets, models
        from negmerge_cli.core.units import parse_size, resolve_device

        self.options, self.ranks = options, ranks
        self.device = _rank_device(resolve_device(options.device), ranks)
        self.budget = parse_size(options.cache_memory, option("cache_memory"))
        models.check_model_name(options.model)
        self.train_set = datasets.load_dataset(options.data, "train", options.classnames, options.templates)
        self.val_set = datasets.load_dataset(_val_spec(options.data), "val", options.classnames, options.templates)
        self.quick_gelu = _quick_gelu(options)
        self.folder = SweepFolder(options.output, sweep_identity(options, self.train_set, self.val_set))
        if ranks.is_main and not self.folder.base.exists():  # a new sweep: no folder for unreadable data
            for data in (self.train_set, self.val_set):
                datasets.check_images(data)

    def prepare(self, points: list[GridPoint]) -> list[GridPoint]:
        """Claim the folder, write the base, build the model and head; the points still to train."""
        from negmerge_cli.clip import train

        for point in points:  # fail on an indivisible batch before anything is written
            train.micro_batch_size(_settings(self.options, point), self.ranks.world_size)
        if self.ranks.is_main:
            self._write_base()
        self.ranks.barrier()
        todo = [p for p in points if not self.folder.finished(p)]
        for point in points:
            if point not in todo:
                output().log(f"skip {point.name} (finished)")
        self.ranks.barrier()  # every rank has decided before rank 0 writes anything new
        self._load_base()
        return todo

    def _write_base(self) -> None:
        from negmerge_cli.checkpoint import provenance
        from negmerge_cli.clip import models

        options, folder = self.options, self.folder
        with folder.locked():  # held since the claim: a failure here leaves nothing (SweepFolder.claim)
            folder.check_identity()
            if not folder.base.exists():
                base_model = models.create_model(options.model, options.pretrained, quick_gelu=self.quick_gelu)
                metadata = provenance("finetune", kind="checkpoint", role="base", model=options.model,
                                      pretrained=options.pretrained, data=options.data)
                models.save_checkpoint(base_model, folder.base, metadata)
                output().log(f"wrote {folder.base}")

    def _load_base(self) -> None:
        from negmerge_cli.clip import models
        from negmerge_cli.clip.evaluate import ImageCache
        from negmerge_cli.clip.zeroshot import build_head

        self.model = models.create_model(self.options.model, str(self.folder.base), self.device)
        self.base_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.linear_encoder = self.expansion_point = None
        if self.options.finetuning_mode == "linear" and self.ranks.is_main:  # built once, at the base
            from negmerge_cli.checkpoint import linearization
            from negmerge_cli.clip.linearize import LinearizedEncoder

            self.linear_encoder = LinearizedEncoder(self.model.visual).eval()
            self.expansion_point = linearization.expansion_point(self.folder.base)
        tokenizer = models.tokenizer_for(self.options.model)
        self.head = build_head(self.model, tokenizer, self.train_set.classnames, self.train_set.templates)
        self.val_cache = None
        if self.ranks.is_main:
            self.val_cache = ImageCache.build(self.val_set, models.transforms_for(self.model, train=False),
                                              self.budget, self.options.workers)
            if self.folder.base_metrics() is None:
                metrics = self._validate()
                self.folder.set_base_metrics(metrics)
                output().log(f"base Val acc1 {100 * metrics.acc1:.2f}%")

    def _validate(self, linear: bool = False) -> Metrics:
        """Val accuracy of the model as it is; ``linear``: of its linearization around the base."""
        from negmerge_cli.clip.evaluate import evaluate_cached

        return evaluate_cached(self.model, self.val_cache, self.head, self.options.eval_batch_size, self.device,
                               precision=self.options.precision, encode=self.linear_encoder if linear else None)

    def train(self, point: GridPoint) -> Optional[TrainedPoint]:
        from negmerge_cli.clip import train

        self.model.load_state_dict(self.base_state)
        data = self.train_set.with_transform(train_transform(self.model, self.options, point.randaug,
                                                             self.train_set.spec.kind))
        stats = train.train_image_encoder(self.model, self.head, data, _settings(self.options, point), self.device,
                                          self.ranks, description=f"[{point.index}] {point.name}")
        trained = self._save_point(point, stats) if self.ranks.is_main else None
        self.ranks.barrier()
        return trained

    def _save_point(self, point: GridPoint, stats: dict) -> TrainedPoint:
        from negmerge_cli.checkpoint import provenance
        from negmerge_cli.clip import models

        options = self.options
        linear = options.finetuning_mode == "linear"
        metrics = self._validate(linear)
        transform = describe_train_transform(options, point.randaug, self.train_set.spec.kind)
        metadata = provenance("finetune", kind="checkpoint", model=options.model, pretrained=options.pretrained,
                              data=options.data, base=self.folder.base.name, hyperparameters=point.hyperparameters(),
                              precision=options.precision, seed_mode=options.seed_mode,
                              freeze=self.folder.identity["freeze"], frozen_parameters=stats["frozen_parameters"],
                              val_acc1=f"{metrics.acc1:.6f}", train_split=self.train_set.split_source,
                              val_split=self.val_set.split_source, transform=transform)
        metadata |= self.expansion_point if linear else {}
        path = self.folder.checkpoint(point)
        models.save_checkpoint(self.model, path, metadata, force=True)
        return TrainedPoint(path, metrics, {**stats, "transform": transform}, "Val acc1")


def train_transform(model, options: FinetuneOptions, randaug: str, kind: str):
    """A point's training transform: open_clip's, or timm RandAugment built as the release builds it."""
    from negmerge_cli.clip import datasets, models

    augment = None if randaug == NO_AUGMENTATION else randaug
    return models.transforms_for(model, train=True, randaug=augment, crop_scale=options.crop_scale,
                                 hflip=options.hflip, interpolation=options.randaug_interpolation,
                                 grayscale=kind in datasets.GRAYSCALE_BEFORE_RANDAUG)


def describe_train_transform(options: FinetuneOptions, randaug: str, kind: str) -> str:
    """One line for the point record and checkpoint metadata: what produced the training images."""
    from negmerge_cli.clip import datasets

    if randaug == NO_AUGMENTATION:
        return "open_clip train transform"
    gray = "resize to the model's size, 3-channel grayscale, then " if kind in datasets.GRAYSCALE_BEFORE_RANDAUG else ""
    return (f"{gray}timm transforms_imagenet_train {randaug}, interpolation {options.randaug_interpolation}, "
            f"crop scale {options.crop_scale:g}, hflip {options.hflip:g}")


def sweep_identity(options: FinetuneOptions, train_set=None, val_set=None) -> dict:
    """What a sweep folder is a sweep of (its sweep.json): a run with other values is refused. The
    data sets are loaded unless given (a run has them already)."""
    from negmerge_cli.clip import datasets

    train_set = train_set or datasets.load_dataset(options.data, "train", options.classnames, options.templates)
    val_set = val_set or datasets.load_dataset(_val_spec(options.data), "val", options.classnames, options.templates)
    identity = identity_of(
        options.model, options.pretrained, options.data, options.batch_size, options.warmup_steps,
        options.templates, options.classnames, options.crop_scale, options.hflip, options.seed_mode,
        options.freeze, quick_gelu=_quick_gelu(options), precision=options.precision)
    # where train and Val come from and how RandAugment resamples are part of what a sweep is
    identity = {**identity, "train_split": train_set.split_source, "val_split": val_set.split_source,
                "randaug_interpolation": options.randaug_interpolation}
    if options.finetuning_mode != "standard":  # recorded only when not standard: older sweeps stay valid
        identity["finetuning_mode"] = options.finetuning_mode
    return identity


def _quick_gelu(options: FinetuneOptions) -> bool:
    from negmerge_cli.clip import models

    return models.needs_quick_gelu(options.model, options.pretrained) if options.quick_gelu is None \
        else options.quick_gelu


def _settings(options: FinetuneOptions, point: GridPoint):
    from negmerge_cli.clip.train import TrainSettings

    return TrainSettings(lr=point.lr, wd=point.wd, label_smoothing=point.label_smoothing, seed=point.train_seed,
                         epochs=point.epochs, steps=point.steps, batch_size=options.batch_size,
                         accum_steps=options.accum_steps, warmup_steps=options.warmup_steps, workers=options.workers,
                         precision=options.precision, freeze=tuple(options.freeze),
                         linear=options.finetuning_mode == "linear")


def _val_spec(data: str) -> str:
    from negmerge_cli.clip.datasets import parse_spec

    spec = parse_spec(data)
    base = data.rsplit(":", 1)[0] if spec.split else data
    return f"{base}:val"


def _rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    if device.type == "cuda" and ranks.enabled:
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device
