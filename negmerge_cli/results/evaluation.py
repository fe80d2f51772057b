"""Accuracy in CLIP_benchmark's shape: :class:`Metrics`, which both families' sweeps record as a
point's Val accuracy, and the CLIP family's results: zero-shot accuracy on a dataset (plus counts
and speed) and the lambda search over forget/retain sets. The classifier family's unlearning
results are :mod:`negmerge_cli.results.classifier`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

ZEROSHOT_TASK = "zeroshot_classification"
SEARCH_TASK = "coefficient_search"
SEARCH_RULE = "lowest forget acc1 among coefs with retain acc1 >= threshold x base retain acc1; ties to the smallest coef"


@dataclass(frozen=True)
class Metrics:
    """Classification accuracy, as fractions (CLIP_benchmark's keys), of either family's models."""

    acc1: float
    acc5: float
    mean_per_class_recall: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatasetEvaluation:
    """One model on one dataset: CLIP_benchmark's result shape plus counts and speed."""

    dataset: str
    model: str
    pretrained: Optional[str]
    metrics: Metrics
    n_images: int
    n_classes: int
    n_templates: int
    seconds: float
    images_per_s: float
    task: str = ZEROSHOT_TASK
    precision: str = "fp32"
    quick_gelu: bool = False  # the activation the evaluated model used
    split_source: Optional[str] = None  # where the split's images come from
    classes: Optional[dict[str, str]] = None  # image folders: class folder -> the name the prompts use, label order
    extra_metrics: dict[str, float] = field(default_factory=dict)  # beyond accuracy, e.g. mia (other scenarios)

    def to_json(self) -> dict:
        source = {"split_source": self.split_source} if self.split_source else {}
        classes = {"classes": dict(self.classes)} if self.classes else {}
        return {"dataset": self.dataset, **source, "model": self.model, "pretrained": self.pretrained,
                "task": self.task, "metrics": {**self.metrics.to_json(), **self.extra_metrics},
                "n_images": self.n_images, "n_classes": self.n_classes, "n_templates": self.n_templates,
                "seconds": self.seconds, "images_per_s": self.images_per_s, "precision": self.precision,
                "quick_gelu": self.quick_gelu, **classes}


@dataclass(frozen=True)
class SearchPoint:
    """Forget and retain top-1 accuracy of base - coef * tau."""

    coef: float
    forget: float
    retain: float

    def to_json(self) -> dict:
        return {"coef": self.coef, "forget_acc1": self.forget, "retain_acc1": self.retain}


@dataclass
class SearchRun:
    """One way of searching (the grid, or the fast bisection): what it evaluated and chose."""

    chosen: Optional[SearchPoint]
    points: list[SearchPoint]
    new_evaluations: int
    seconds: float

    def to_json(self) -> dict:
        return {"chosen": self.chosen.to_json() if self.chosen else None,
                "points": [p.to_json() for p in self.points], "n_new_evaluations": self.new_evaluations,
                "n_points": len(self.points), "seconds": self.seconds}


@dataclass
class SearchResult:
    """The coefficient search: every point evaluated, the base accuracies, and the choice."""

    model: str
    checkpoint: Optional[str]
    vector: str
    forget: str
    retain: str
    threshold: float
    retain_limit: float
    search: str
    coefs: list[float]
    base: SearchPoint
    n_forget_images: int
    n_retain_images: int
    runs: dict[str, SearchRun]
    evaluations: int
    heads_rebuilt: bool
    seconds: float
    base_retain: float  # the retain bar's base: base.retain, or a stored accuracy (--base-retain)
    base_retain_source: str
    precision: str = "fp32"
    quick_gelu: bool = False
    split_sources: Optional[dict] = None  # {"forget": ..., "retain": ...}: where each split's images come from
    linearized_around: Optional[dict] = None  # linearized search: {"file", "sha256"} of the expansion point
    forward_passes: Optional[int] = None  # image-encoder passes over both sets (a jvp pass counts one)

    @property
    def primary(self) -> SearchRun:
        return self.runs["grid"] if self.search == "grid" else self.runs["fast"]

    @property
    def chosen(self) -> Optional[SearchPoint]:
        return self.primary.chosen

    @property
    def points(self) -> list[SearchPoint]:
        return self.primary.points

    def agreement(self) -> Optional[dict]:
        """How the fast search's choice compares with the grid's (``compare`` mode only)."""
        if set(self.runs) != {"fast", "grid"}:
            return None
        fast, grid = self.runs["fast"].chosen, self.runs["grid"].chosen
        if fast is None or grid is None:
            return {"same_choice": fast == grid}
        return {"same_choice": fast.coef == grid.coef, "coef_difference": round(fast.coef - grid.coef, 10),
                "forget_acc1_difference": fast.forget - grid.forget,
                "retain_acc1_difference": fast.retain - grid.retain}

    def to_json(self) -> dict:
        heads = ("rebuilt per coefficient (the vector changes the text tower)" if self.heads_rebuilt
                 else "built once (the vector leaves the text tower unchanged)")
        result = {
            "task": SEARCH_TASK, "model": self.model, "checkpoint": self.checkpoint, "vector": self.vector,
            "forget": self.forget, "retain": self.retain, "rule": SEARCH_RULE, "threshold": self.threshold,
            "base_retain_acc1": self.base_retain,
            "base_retain_source": self.base_retain_source, "retain_limit": self.retain_limit,
            "precision": self.precision, "quick_gelu": self.quick_gelu, "search": self.search, "coefs": list(self.coefs),
            "base": {"forget_acc1": self.base.forget, "retain_acc1": self.base.retain,
                     "n_forget_images": self.n_forget_images, "n_retain_images": self.n_retain_images},
            "points": [p.to_json() for p in self.points],
            "chosen": self.chosen.to_json() if self.chosen else None,
            "feasible": self.chosen is not None, "n_evaluations": self.evaluations, "heads": heads,
            "seconds": self.seconds, "runs": {kind: run.to_json() for kind, run in self.runs.items()},
        }
        if self.split_sources:
            result["split_sources"] = self.split_sources
        result["linearized"] = self.linearized_around is not None
        if self.linearized_around is not None:
            result["linearized_around"] = self.linearized_around
        if self.forward_passes is not None:
            result["forward_passes"] = self.forward_passes
        agreement = self.agreement()
        if agreement is not None:
            result["agreement"] = agreement
        return result



