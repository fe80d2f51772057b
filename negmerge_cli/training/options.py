"""The options of ``finetune`` and ``eval``, declared once for both model families and for every
caller (the CLI builds these; Python callers build them too and get the same defaults and checks).

A field that only one family can honour is tagged with that family (``FOR_CLIP``,
``FOR_CLASSIFIER``); the other family refuses any value but the default
(:func:`negmerge_cli.training.family.refuse_foreign_options`), never ignores it. Fields whose default
depends on the family (learning rate, weight decay, warm-up, optimizer) are None until the family
fills them in (:meth:`negmerge_cli.training.family.Family.with_defaults`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import limits
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.training.sweep import PER_POINT, Grid

FINETUNING_MODES = ("standard", "linear")
FOR_CLIP = {"family": "clip"}
FOR_CLASSIFIER = {"family": "classifier"}
DEFAULT_COEFS = tuple(round(i / 20, 10) for i in range(21))  # the paper's lambda grid, 0 to 1 by 0.05
SEARCHES = ("grid", "fast", "compare")  # compare: fast, then the grid, and how they agree


def _clip(default, **kwargs):
    return field(default=default, metadata={**FOR_CLIP, **kwargs})


def _classifier(default, **kwargs):
    return field(default=default, metadata={**FOR_CLASSIFIER, **kwargs})


@dataclass
class FinetuneOptions:
    """A sweep of fine-tunes (one checkpoint per grid point) into the folder ``output``."""

    model: str
    data: str
    output: Path
    pretrained: Optional[str] = None  # None: a seeded random initialisation
    grid: Grid = field(default_factory=Grid)  # lr / wd None: the family's
    batch_size: int = 128
    warmup_steps: Optional[int] = None  # None: the family's (CLIP 500, classifier 0)
    optimizer: Optional[str] = None  # None: the family's (CLIP adamw, its only one; classifier sgd)
    workers: int = 2
    point: Optional[Sequence[int]] = None  # run only these grid indices
    device: str = "auto"
    seed_mode: str = PER_POINT  # per-point: each point's own seed from its --seed; shared: --seed as is
    # the CLIP family
    accum_steps: int = _clip(1)
    templates: Optional[Path] = _clip(None)
    classnames: Optional[Path] = _clip(None)
    eval_batch_size: int = _clip(256)
    cache_memory: str = _clip("4GiB")
    crop_scale: float = _clip(0.08)  # RandAugment runs: smallest random-resized-crop area (timm's default)
    hflip: float = _clip(0.5)  # RandAugment runs: horizontal flip probability (timm's default)
    quick_gelu: Optional[bool] = _clip(None)  # None: what the pretrained weights need
    precision: str = _clip("fp32")  # the released code's; bf16/fp16 autocast on request
    randaug_interpolation: str = _clip("random")  # RandAugment runs: timm's default, as the release left it
    freeze: Sequence[str] = _clip((), hint="classifiers train every parameter")
    finetuning_mode: str = _clip("standard")  # standard | linear (the tangent space of the base)
    # the classifier family
    num_classes: Optional[int] = _classifier(None)  # None: the dataset's
    forget_split: Optional[Path] = _classifier(None)  # `negmerge split` JSON; needed by subset retain/forget
    subset: str = _classifier("all")  # all | retain (Dr) | forget (Df)
    # ce | ascent | wrong-labels | random-labels | salun | l1-sparse (negmerge_cli/classifier/objectives.py)
    objective: str = _classifier("ce")
    schedule: str = _classifier("cosine")  # cosine | step
    milestones: Sequence[int] = _classifier(())  # step: x0.1 from each of these epochs on; (): at 50%, 75%
    saliency_fraction: float = _classifier(0.5)  # salun: the top share of weights by forget-gradient magnitude
    saliency_freeze: bool = _classifier(False)  # salun: also hold the weights outside the mask (a6e89fd)
    l1_alpha: float = _classifier(5e-4)  # l1-sparse: the l1 coefficient in the first epoch, decaying linearly
    augment: Optional[str] = _classifier(None)  # crop-flip | crop | none; None: the data's

    def __post_init__(self) -> None:  # every number in range before anything runs
        self.output = Path(self.output)
        self.milestones = tuple(self.milestones or ())
        limits.check_fields("finetune", self)
        limits.check_fields("finetune", self.grid)
        _check_size_and_precision(self)


@dataclass
class EvalOptions:
    """The model to evaluate and how (shared by plain evaluation and the coefficient search)."""

    model: str
    checkpoint: Optional[str] = None  # a local file; or ``pretrained`` (a tag or file)
    pretrained: Optional[str] = _clip(None)
    templates: Optional[Path] = _clip(None)
    classnames: Optional[Path] = _clip(None)
    device: str = "auto"
    batch_size: int = 256
    workers: int = 2
    cache_memory: str = "4GiB"  # decoded images kept in memory
    quick_gelu: Optional[bool] = _clip(None)  # None: what the weights need
    precision: str = "fp32"  # the released code's; bf16/fp16 autocast on request
    linearized_around: Optional[str] = _clip(None)  # a linear checkpoint's theta0; None: the recorded base beside it
    linearize: bool = _clip(False)  # evaluate linearized whatever the files record (post-hoc linearization)
    # the classifier family: one dataset, its forget split, optionally the retrained reference
    forget_split: Optional[str] = _classifier(None)
    num_classes: Optional[int] = _classifier(None)  # None: the dataset's class count
    reference: Optional[str] = _classifier(None)  # a retrained checkpoint, or its eval JSON

    def __post_init__(self) -> None:
        limits.check_fields("eval", self)
        _check_size_and_precision(self)
        if self.checkpoint and self.pretrained:
            raise UsageError(f"give {option('checkpoint')} or {option('pretrained')}, not both")
        if not (self.checkpoint or self.pretrained):
            raise UsageError(f"give {option('checkpoint')} PATH (or {option('pretrained')} TAG)")

    @property
    def weights(self) -> str:
        return self.checkpoint or self.pretrained


@dataclass
class SearchOptions:
    """The search for lambda in base - lambda * vector."""

    vector: str
    forget: Optional[str] = _clip(None)  # CLIP: the forget and retain dataset specs (default split: val)
    retain: Optional[str] = _clip(None)
    coefs: Sequence[float] = DEFAULT_COEFS
    threshold: float = 0.95
    search: str = _clip("grid")  # CLIP: grid (the paper's), fast, or compare
    refine: int = _clip(2)
    base_retain: Optional[str] = _clip(None)  # CLIP: a fraction, or FILE.json[:KEY] of stored accuracies
    # classifiers: the rule that picks lambda. retain-bar (the default, honest: reads only Dr, or the split's
    # hold-out val, and Df) | gap (the oracle: reads the retrained model and Dtest; benchmarking only)
    select: str = _classifier("retain-bar")

    def __post_init__(self) -> None:
        self.coefs = tuple(self.coefs)
        if self.search not in SEARCHES:
            raise UsageError(f"{option('search')} {self.search!r}: choose grid, fast or compare")
        if not self.coefs:
            raise UsageError(f"{option('coefs')}: give one or more finite coefficients")
        limits.check_fields("eval", self)


def _check_size_and_precision(options) -> None:
    from negmerge_cli.core.units import parse_size  # imports torch: only when options are made
    from negmerge_cli.training.precision import check_precision

    parse_size(options.cache_memory, option("cache_memory"))
    check_precision(options.precision)
