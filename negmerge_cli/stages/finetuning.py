"""``finetune``: a hyperparameter sweep of image-encoder fine-tunes written into one folder.

Orchestration only: the grid and the sweep folder are :mod:`negmerge_cli.training.sweep`, the model, data and
training loop are the model family's (:mod:`negmerge_cli.clip`). Under torchrun, rank 0 does all
file work.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.output import output
from negmerge_cli.results import Metrics, PointRecord, SweepManifest
from negmerge_cli.training.sweep import (
    NO_AUGMENTATION,
    PER_POINT,
    Grid,
    GridPoint,
    SweepFolder,
    check_seed_mode,
    expand_grid,
    identity_of,
    normalise_randaug,
    select_points,
)


@dataclass
class FinetuneOptions:
    model: str
    data: str
    output: Path
    pretrained: Optional[str] = None
    grid: Grid = field(default_factory=Grid)
    batch_size: int = 128
    accum_steps: int = 1
    warmup_steps: Optional[int] = None  # None: the family's (CLIP 500, classifier 0)
    workers: int = 2
    point: Optional[Sequence[int]] = None  # run only these grid indices
    templates: Optional[Path] = None
    classnames: Optional[Path] = None
    device: str = "auto"
    eval_batch_size: int = 256
    cache_memory: str = "4GiB"
    crop_scale: float = 0.08  # RandAugment runs: smallest random-resized-crop area (timm's default)
    hflip: float = 0.5  # RandAugment runs: horizontal flip probability (timm's default)
    quick_gelu: Optional[bool] = None  # None: what the pretrained weights need (models.needs_quick_gelu)
    precision: str = "fp32"  # the released code's; bf16/fp16 autocast on request
    randaug_interpolation: str = "random"  # RandAugment runs: timm's default, as the release left it
    seed_mode: str = PER_POINT  # per-point: each point's own seed from its --seed; shared: --seed as is
    freeze: Sequence[str] = ()  # globs of image-encoder parameters kept at their base values
    # classifier family (negmerge_cli/classifier/sweep_run.py)
    num_classes: Optional[int] = None  # None: the dataset's
    forget_split: Optional[Path] = None  # `negmerge split` JSON; needed by subset retain/forget
    subset: str = "all"  # all | retain (Dr) | forget (Df)
    objective: str = "ce"  # ce | ascent | random-labels
    optimizer: Optional[str] = None  # None: the family's (CLIP adamw, classifier sgd)
    schedule: str = "cosine"  # classifier: cosine | step
    augment: Optional[str] = None  # classifier: crop-flip | crop | none; None: the data's (crop-flip; crop for digits)

    def __post_init__(self) -> None:  # every number in range before anything runs (negmerge_cli.core.limits)
        from negmerge_cli.core import limits
        from negmerge_cli.core.units import parse_size

        limits.check_fields("finetune", self)
        limits.check_fields("finetune", self.grid)
        parse_size(self.cache_memory, option("cache_memory"))


CLIP_WARMUP_STEPS = 500


def _family(options: FinetuneOptions) -> str:
    from negmerge_cli.stages.registry import family_of

    return family_of(options.model)


def _clip_warmup(options: FinetuneOptions) -> int:
    return CLIP_WARMUP_STEPS if options.warmup_steps is None else options.warmup_steps


def _check_clip_only(options: FinetuneOptions) -> None:
    """Options of the classifier family a CLIP sweep cannot honour: refused, not ignored."""
    extras = [("num_classes", options.num_classes is not None), ("forget_split", options.forget_split is not None),
              ("subset", options.subset != "all"), ("objective", options.objective != "ce"),
              ("schedule", options.schedule != "cosine"), ("optimizer", options.optimizer not in (None, "adamw")),
              ("augment", options.augment is not None)]
    given = [name for name, present in extras if present]
    if given:
        raise UsageError(f"{option(given[0])} is for classifier models; {option('model')} {options.model} is a CLIP model")


def plan(options: FinetuneOptions) -> list[GridPoint]:
    """The grid points this call would run (after the ``point`` selection); validates the options."""
    if _family(options) == "classifier":
        from negmerge_cli.classifier import sweep_run

        return sweep_run.plan(options)
    return _plan_clip(options)


def _plan_clip(options: FinetuneOptions) -> list[GridPoint]:
    from negmerge_cli.clip import datasets, freeze, models

    _check_clip_only(options)
    from negmerge_cli.training.precision import check_precision

    check_precision(options.precision)
    if options.randaug_interpolation not in models.RANDAUG_INTERPOLATIONS:
        raise UsageError(f"{option('randaug_interpolation')} {options.randaug_interpolation!r}: must be one of "
                         f"{', '.join(models.RANDAUG_INTERPOLATIONS)}")
    check_seed_mode(options.seed_mode)
    spec = datasets.parse_spec(options.data)
    if spec.split not in (None, "train"):
        raise UsageError(f"{option('data')} {options.data}: finetune trains on the train split (Val is held out for it)")
    randaug = normalise_randaug(options.grid.randaug)
    for value in randaug:
        if value != NO_AUGMENTATION:
            models.check_randaug(value)
    grid = Grid(**{**asdict(options.grid), "randaug": randaug})
    points = expand_grid(grid, lambda aug: datasets.paper_epochs(spec.kind, aug != NO_AUGMENTATION),
                         options.seed_mode)
    if options.freeze:
        freeze.select(freeze.encoder_sizes(options.model), options.freeze)
    points = select_points(points, options.point)
    if not points:
        raise UsageError("the grid has no points")
    return points


def finetune(options: FinetuneOptions) -> Optional[SweepManifest]:
    """Run (or resume) the sweep into ``options.output``; returns the manifest (None off rank 0)."""
    if _family(options) == "classifier":
        from negmerge_cli.classifier import sweep_run

        return sweep_run.finetune(options)
    return _finetune_clip(options)


def _finetune_clip(options: FinetuneOptions) -> Optional[SweepManifest]:
    from negmerge_cli.clip import train

    points = _plan_clip(options)
    ranks = train.init_distributed()
    try:
        with files.operation(), (output().silenced() if not ranks.is_main else contextlib.nullcontext()):
            sweep = _SweepRun(options, ranks)
            with sweep.folder.claim() if ranks.is_main else contextlib.nullcontext():  # rank 0 does the file work
                for point in sweep.prepare(points):
                    sweep.train_point(point)
            return sweep.folder.rebuild_manifest() if ranks.is_main else None
    finally:
        train.shutdown_distributed(ranks)


class _SweepRun:
    """The state one ``finetune`` call shares between its grid points."""

    def __init__(self, options: FinetuneOptions, ranks):
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

    def _validate(self) -> Metrics:
        from negmerge_cli.clip.evaluate import evaluate_cached

        return evaluate_cached(self.model, self.val_cache, self.head, self.options.eval_batch_size, self.device,
                               precision=self.options.precision)

    def train_point(self, point: GridPoint) -> None:
        from negmerge_cli.clip import train

        options, main = self.options, self.ranks.is_main
        self.model.load_state_dict(self.base_state)
        data = self.train_set.with_transform(train_transform(self.model, options, point.randaug,
                                                             self.train_set.spec.kind))
        record = PointRecord(point.index, point.name, "running", point.hyperparameters(),
                             host=socket.gethostname(), pid=os.getpid())
        if main:
            self.folder.write_record(record)
        try:
            stats = train.train_image_encoder(self.model, self.head, data, _settings(options, point), self.device,
                                              self.ranks, description=f"[{point.index}] {point.name}")
        except Exception as exc:
            if main:
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.folder.write_record(PointRecord(point.index, point.name, "failed", point.hyperparameters(),
                                                     error=first_line))
            raise
        if main:
            self._save_point(point, stats)
        self.ranks.barrier()

    def _save_point(self, point: GridPoint, stats: dict) -> None:
        from negmerge_cli.checkpoint import provenance
        from negmerge_cli.clip import models

        options = self.options
        metrics = self._validate()
        transform = describe_train_transform(options, point.randaug, self.train_set.spec.kind)
        metadata = provenance("finetune", kind="checkpoint", model=options.model, pretrained=options.pretrained, data=options.data,
                              base=self.folder.base.name, hyperparameters=point.hyperparameters(),
                              precision=options.precision, seed_mode=options.seed_mode,
                              freeze=self.folder.identity["freeze"], frozen_parameters=stats["frozen_parameters"],
                              val_acc1=f"{metrics.acc1:.6f}", train_split=self.train_set.split_source,
                              val_split=self.val_set.split_source, transform=transform)
        models.save_checkpoint(self.model, self.folder.checkpoint(point), metadata, force=True)
        self.folder.write_record(PointRecord(point.index, point.name, "done", point.hyperparameters(),
                                             file=self.folder.checkpoint(point).name, val=metrics,
                                             train={**stats, "transform": transform}))
        output().log(f"{point.name}: Val acc1 {100 * metrics.acc1:.2f}%  ({stats['images_per_s']:.0f} img/s)")


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
        options.model, options.pretrained, options.data, options.batch_size, _clip_warmup(options),
        options.templates, options.classnames, options.crop_scale, options.hflip, options.seed_mode,
        options.freeze, quick_gelu=_quick_gelu(options), precision=options.precision)
    # where train and Val come from and how RandAugment resamples are part of what a sweep is
    return {**identity, "train_split": train_set.split_source, "val_split": val_set.split_source,
            "randaug_interpolation": options.randaug_interpolation}


def _quick_gelu(options: FinetuneOptions) -> bool:
    from negmerge_cli.clip import models

    return models.needs_quick_gelu(options.model, options.pretrained) if options.quick_gelu is None \
        else options.quick_gelu


def _settings(options: FinetuneOptions, point: GridPoint):
    from negmerge_cli.clip.train import TrainSettings

    return TrainSettings(lr=point.lr, wd=point.wd, label_smoothing=point.label_smoothing, seed=point.train_seed,
                         epochs=point.epochs, steps=point.steps, batch_size=options.batch_size,
                         accum_steps=options.accum_steps, warmup_steps=_clip_warmup(options), workers=options.workers,
                         precision=options.precision, freeze=tuple(options.freeze))


def _val_spec(data: str) -> str:
    from negmerge_cli.clip.datasets import parse_spec

    spec = parse_spec(data)
    base = data.rsplit(":", 1)[0] if spec.split else data
    return f"{base}:val"


def _rank_device(device: torch.device, ranks) -> torch.device:
    if device.type == "cuda" and ranks.enabled:
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device
