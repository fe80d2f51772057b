"""The standard-classifier scenario's results (negmerge_cli.classifier): the four unlearning
metrics, an evaluation with its reference, and the lambda search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

CLASSIFIER_EVAL_TASK = "classifier_unlearning_eval"
CLASSIFIER_SEARCH_TASK = "classifier_coefficient_search"
UNLEARNING_METRICS = ("dr_acc", "df_acc", "dtest_acc", "mia_efficacy")


@dataclass(frozen=True)
class UnlearningMetrics:
    """Accuracy on Dr, Df, Dtest and MIA-efficacy, as fractions in [0, 1]."""

    dr_acc: float
    df_acc: float
    dtest_acc: float
    mia_efficacy: float

    def values(self) -> tuple[float, float, float, float]:
        return (self.dr_acc, self.df_acc, self.dtest_acc, self.mia_efficacy)

    def to_json(self) -> dict:
        return dict(zip(UNLEARNING_METRICS, self.values()))


@dataclass(frozen=True)
class ReferenceMetrics:
    """The model the Avg. Gap is measured against (the retrained one): where its metrics came from."""

    source: str  # the file given as --reference
    kind: str  # "checkpoint" (evaluated here) or "eval_json" (read from an earlier eval --json)
    metrics: UnlearningMetrics

    def to_json(self) -> dict:
        return {"source": self.source, "kind": self.kind, "metrics": self.metrics.to_json()}


@dataclass
class ClassifierEvaluation:
    """One classifier on Dr, Df and Dtest of one forget split: the four metrics, and the Avg. Gap
    (percentage points) to a reference when one is given."""

    model: str
    num_classes: int
    checkpoint: str
    checkpoint_sha256: str
    data: dict  # the dataset's identity (ClassifierData.identity)
    forget_split: dict  # {"file", "sha256"}: the split file and the digest of its forget indices
    counts: dict  # {"dr", "df", "dtest", "shadow_members"}
    metrics: UnlearningMetrics
    reference: Optional[ReferenceMetrics] = None
    avg_gap: Optional[float] = None  # percentage points
    seconds: float = 0.0
    images_per_s: float = 0.0
    task: str = CLASSIFIER_EVAL_TASK
    val_acc: Optional[float] = None  # accuracy on the split's hold-out validation set (Dval), when it has one

    def to_json(self) -> dict:
        held_out = {"val_acc": self.val_acc} if self.val_acc is not None else {}
        return {"task": self.task, "model": self.model, "num_classes": self.num_classes,
                "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256, "data": self.data,
                "forget_split": self.forget_split, "counts": self.counts, "metrics": self.metrics.to_json(),
                **held_out, "reference": self.reference.to_json() if self.reference else None,
                "avg_gap_points": self.avg_gap, "seconds": self.seconds, "images_per_s": self.images_per_s}


@dataclass(frozen=True)
class ClassifierSearchPoint:
    """The four metrics of original - coef * tau, and its Avg. Gap when there is a reference;
    ``metrics`` is None (and ``error`` says why) when the model's outputs were NaN/Inf there."""

    coef: float
    metrics: Optional[UnlearningMetrics]
    avg_gap: Optional[float] = None
    error: Optional[str] = None
    val_acc: Optional[float] = None  # accuracy on the split's hold-out validation set, when it has one

    def to_json(self) -> dict:
        values = self.metrics.to_json() if self.metrics else {}
        held_out = {"val_acc": self.val_acc} if self.val_acc is not None else {}
        return {"coef": self.coef, **values, **held_out, "avg_gap_points": self.avg_gap,
                **({"error": self.error} if self.error else {})}


@dataclass
class ClassifierSearchResult:
    """The classifier's lambda search: every point, the rule, and the choice (None: nothing passed).

    ``oracle``: the rule read what a real unlearner does not hold (the retrained model, Dtest);
    ``reads``: the metrics the rule read; ``at_grid_end``: the chosen lambda is the grid's largest,
    so the best one may lie beyond the grid."""

    model: str
    checkpoint: str
    vector: str
    data: dict
    forget_split: dict
    select: str  # retain-bar | gap (the oracle)
    rule: str
    threshold: float
    retain_limit: Optional[float]  # retain-bar: threshold x the original's Dr (or hold-out) accuracy
    points: list[ClassifierSearchPoint]
    chosen: Optional[ClassifierSearchPoint]
    reference: Optional[ReferenceMetrics]
    counts: dict
    seconds: float
    task: str = CLASSIFIER_SEARCH_TASK
    oracle: bool = False
    reads: tuple[str, ...] = ()
    at_grid_end: bool = False

    @property
    def base(self) -> ClassifierSearchPoint:
        return min(self.points, key=lambda p: abs(p.coef))

    def to_json(self) -> dict:
        return {"task": self.task, "model": self.model, "checkpoint": self.checkpoint, "vector": self.vector,
                "data": self.data, "forget_split": self.forget_split, "select": self.select, "oracle": self.oracle,
                "rule": self.rule, "reads": list(self.reads), "threshold": self.threshold,
                "retain_limit": self.retain_limit,
                "reference": self.reference.to_json() if self.reference else None, "counts": self.counts,
                "points": [p.to_json() for p in self.points],
                "chosen": self.chosen.to_json() if self.chosen else None, "feasible": self.chosen is not None,
                "chosen_at_grid_end": self.at_grid_end, "seconds": self.seconds}
