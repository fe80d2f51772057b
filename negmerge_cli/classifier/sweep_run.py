"""``finetune`` for the classifier family: the same sweep folder (grid, records, resume, ``--point``,
per-point seeds) as the CLIP family, with a classifier, class-labelled data and an optional
forget/retain subset.

Without ``--pretrained`` the base is a random initialisation (seeded with 0) and every point trains
from it: ``--subset all`` gives the original model, ``--subset retain`` the retrained one. With
``--pretrained FILE`` (e.g. the original) the points fine-tune it, e.g. NegMerge's k fine-tunes on
Df (``--subset forget``). Each point's Val metrics are its test-set accuracy.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from negmerge_cli.core import errors
from negmerge_cli.core.errors import UsageError
from negmerge_cli.core.output import output
from negmerge_cli.results import Metrics
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.family import TrainedPoint
from negmerge_cli.training.options import FinetuneOptions
from negmerge_cli.training.sweep import (
    NO_AUGMENTATION,
    Grid,
    GridPoint,
    SweepFolder,
    expand_grid,
    identity_of,
    select_points,
)

SUBSETS = ("all", "retain", "forget")
BASE_INIT_SEED = 0


def check_options(options: FinetuneOptions) -> None:
    """Everything that can be refused before data or models are touched."""
    from negmerge_cli.classifier import models, objectives, train
    from negmerge_cli.classifier.data import AUGMENTATIONS

    models.check_classifier_name(options.model)
    if options.num_classes is not None:
        models.check_num_classes(options.num_classes)
    train.check_choices(options.optimizer, options.schedule, options.objective)
    objectives.check(options)
    objectives.check_milestones(options.schedule, options.milestones)
    if options.subset not in SUBSETS:
        raise UsageError(f"{errors.option('subset')} {options.subset!r}: must be one of {', '.join(SUBSETS)}")
    if options.subset != "all" and options.forget_split is None:
        raise UsageError(f"{errors.option('subset')} {options.subset} needs {errors.option('forget_split')} "
                         "(made by `negmerge split`)")
    if [v for v in options.grid.randaug if v != NO_AUGMENTATION]:
        raise UsageError(f"{errors.option('randaug')} is for CLIP models; classifiers take {errors.option('augment')} "
                         f"({', '.join(AUGMENTATIONS)})")
    if options.augment is not None and options.augment not in AUGMENTATIONS:
        raise UsageError(f"{errors.option('augment')} {options.augment!r}: must be one of {', '.join(AUGMENTATIONS)}")


def plan(options: FinetuneOptions) -> list[GridPoint]:
    check_options(options)
    grid = Grid(**{**asdict(options.grid), "randaug": [NO_AUGMENTATION]})
    return select_points(expand_grid(grid, None, options.seed_mode), options.point)


class ClassifierTrainer:
    """The state one classifier ``finetune`` call shares between its grid points (a
    :class:`~negmerge_cli.training.family.PointTrainer`); a single process."""

    def __init__(self, options: FinetuneOptions, ranks: Ranks):
        from negmerge_cli.classifier.data import open_classifier_data
        from negmerge_cli.classifier.split import load_forget_split
        from negmerge_cli.core.units import resolve_device

        self.options, self.ranks = options, ranks
        self.device = resolve_device(options.device)
        self.data = open_classifier_data(options.data)
        self.num_classes = options.num_classes or self.data.num_classes
        if self.num_classes != self.data.num_classes:
            raise UsageError(f"{errors.option('num_classes')} {self.num_classes}: {options.data} has "
                             f"{self.data.num_classes} classes")
        self.split = load_forget_split(options.forget_split, self.data) if options.forget_split else None
        self.train_set = self.data.train.with_augment(training_augment(options.augment, self.data))
        self.indices = self._subset_indices()
        self.forget_indices = self.split.forget_indices if _forget_then_retain(options) else None
        self.base_model = self._build_base() if options.pretrained else None  # refuse bad weights early
        self.folder = SweepFolder(options.output, sweep_identity(options, self.data, self.split, self.num_classes,
                                                                 self.train_set.augment))

    def _subset_indices(self):
        if _forget_then_retain(self.options):  # Df is its own pass (self.forget_indices)
            return self.split.retain_indices
        if self.options.subset == "all":  # with a split: never its hold-out (protocol salun's val_indices)
            return range(len(self.data.train)) if self.split is None else self.split.training_indices
        return self.split.forget_indices if self.options.subset == "forget" else self.split.retain_indices

    def _build_base(self):
        import torch

        from negmerge_cli.classifier import models

        if self.options.pretrained:
            return models.load_classifier(self.options.model, self.num_classes, self.options.pretrained)
        torch.manual_seed(BASE_INIT_SEED)
        return models.create_classifier(self.options.model, self.num_classes)

    def prepare(self, points):
        from negmerge_cli.classifier import models

        with self.folder.locked():
            self.folder.check_identity()
            if not self.folder.base.exists():
                model = self.base_model or self._build_base()
                save_classifier(model, self.folder.base, self._metadata(role="base"), self.options.model,
                                self.num_classes)
                output().log(f"wrote {self.folder.base}")
        self.base = models.load_classifier(self.options.model, self.num_classes, self.folder.base)
        self.base_state = {k: v.clone() for k, v in self.base.state_dict().items()}
        if self.folder.base_metrics() is None:
            self.folder.set_base_metrics(self._test_metrics(self.base))
        todo = [p for p in points if not self.folder.finished(p)]
        for point in points:
            if point not in todo:
                output().log(f"skip {point.name} (finished)")
        return todo

    def _metadata(self, **extra) -> dict:
        from negmerge_cli.checkpoint import provenance

        return provenance("finetune", kind="checkpoint", model=self.options.model, pretrained=self.options.pretrained,
                          data=self.options.data, subset=self.options.subset, objective=self.options.objective,
                          **objective_settings(self.options), **extra)

    def _test_metrics(self, model) -> Metrics:
        from negmerge_cli.classifier.train import test_metrics

        return test_metrics(model.to(self.device), self.data.test, self.num_classes, self.device)

    def train(self, point: GridPoint) -> TrainedPoint:
        from negmerge_cli.classifier.train import train_classifier

        model = self.base
        model.load_state_dict(self.base_state)
        stats = train_classifier(model, self.train_set, self.indices, settings_for(self.options, point),
                                 self.device, description=f"[{point.index}] {point.name}",
                                 forget_indices=self.forget_indices)
        metrics = self._test_metrics(model)
        path = self.folder.checkpoint(point)
        save_classifier(model, path, self._metadata(base=self.folder.base.name, hyperparameters=point.hyperparameters(),
                                                    test_acc1=f"{metrics.acc1:.6f}"),
                        self.options.model, self.num_classes, force=True)
        return TrainedPoint(path, metrics, stats, "test acc1")


def save_classifier(model, path: Path, metadata: dict, name: str, num_classes: int, force: bool = False) -> Path:
    from negmerge_cli.checkpoint import save_state_dict
    from negmerge_cli.classifier.models import architecture_metadata

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_state_dict(state, path, metadata={**metadata, **architecture_metadata(name, num_classes)}, force=force)


def settings_for(options, point):
    from negmerge_cli.classifier.train import ClassifierSettings

    return ClassifierSettings(lr=point.lr, wd=point.wd, label_smoothing=point.label_smoothing, seed=point.train_seed,
                              epochs=point.epochs, steps=point.steps, batch_size=options.batch_size,
                              warmup_steps=options.warmup_steps, optimizer=options.optimizer,
                              schedule=options.schedule, objective=options.objective, workers=options.workers,
                              milestones=tuple(options.milestones), saliency_fraction=options.saliency_fraction,
                              saliency_freeze=options.saliency_freeze, l1_alpha=options.l1_alpha)


def _forget_then_retain(options) -> bool:
    from negmerge_cli.classifier.objectives import FORGET_THEN_RETAIN

    return options.objective in FORGET_THEN_RETAIN


def objective_settings(options) -> dict:
    """The settings that shape the objective and schedule beyond their names, where they apply (recorded
    in every checkpoint and, so that a resume with others is refused, in the sweep's identity)."""
    from negmerge_cli.classifier.objectives import OWN_SETTINGS

    settings = {name: getattr(options, name) for name, owner in OWN_SETTINGS.items() if owner == options.objective}
    if options.milestones:
        settings["milestones"] = list(options.milestones)
    return settings


def training_augment(augment, data):
    """``--augment`` as given, else the data's own training transform (crop + flip; crop alone for
    digits, whose mirror images are other shapes)."""
    from negmerge_cli.classifier.data import augment_named

    return data.train.augment if augment is None else augment_named(augment)


def sweep_identity(options, data, split, num_classes: int, augment) -> dict:
    """The shared identity (model, weights, data, batch, seed mode...) plus what makes a classifier
    sweep: class count, dataset identity, subset, the forget split's digest, objective, optimizer and
    the training augmentation in force (a resume with another is refused)."""
    from negmerge_cli.classifier.data import augment_name

    identity = identity_of(options.model, options.pretrained, options.data, options.batch_size, options.warmup_steps,
                           None, None, seed_mode=options.seed_mode)
    return {**identity, "family": "classifier", "num_classes": num_classes, "dataset": data.identity,
            "subset": options.subset, "forget_split": split.digest if split else None,
            "objective": options.objective, "optimizer": options.optimizer, "schedule": options.schedule,
            "augmentation": augment_name(augment), **objective_settings(options)}
