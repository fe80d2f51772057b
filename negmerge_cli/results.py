"""Typed results of the stages, each with ``to_json()`` (what the tool writes) and, for the files the
tool reads back, ``from_json()``: the data checked against the file's schema
(negmerge_cli.schemas.results, which readers of files use directly) and built field by field, by
name. Callers read fields, never dictionary keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

ZEROSHOT_TASK = "zeroshot_classification"
SEARCH_TASK = "coefficient_search"
DEMO_TASK = "demo"
SEARCH_RULE = "lowest forget acc1 among coefs with retain acc1 >= threshold x base retain acc1; ties to the smallest coef"


def _without_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _read_back(result: type, schema: str, data: object):
    """``data`` (parsed JSON) as ``result``, built by the schema of its file (``schema``, a name in
    negmerge_cli.schemas.results, imported only now); NegmergeError naming the field otherwise."""
    from negmerge_cli import schemas
    from negmerge_cli.schemas import results as files

    return schemas.validate(getattr(files, schema), data, f"{result.__name__} JSON").build()


@dataclass(frozen=True)
class Metrics:
    """Classification accuracy, as fractions (CLIP_benchmark's keys)."""

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



    @classmethod
    def from_json(cls, data: object) -> "DatasetEvaluation":
        return _read_back(cls, "ZeroshotEvaluationFile", data)
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
        agreement = self.agreement()
        if agreement is not None:
            result["agreement"] = agreement
        return result



    @classmethod
    def from_json(cls, data: object) -> "SearchResult":
        return _read_back(cls, "SearchFile", data)
@dataclass
class PointRecord:
    """One grid point of a sweep, as its record file says."""

    index: int
    name: str
    status: str  # running | done | failed
    hyperparameters: dict
    file: Optional[str] = None
    val: Optional[Metrics] = None
    train: Optional[dict] = None  # loss, images/s, steps
    error: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None

    def to_json(self) -> dict:
        values = asdict(self)
        values["val"] = self.val.to_json() if self.val else None
        return _without_none(values)



    @classmethod
    def from_json(cls, data: object) -> "PointRecord":
        return _read_back(cls, "PointRecordFile", data)
@dataclass
class SweepManifest:
    """What a sweep folder holds: its identity, the base's Val accuracy, and every point."""

    identity: dict
    base_file: str
    base_val: Optional[Metrics] = None
    points: list[PointRecord] = field(default_factory=list)

    @property
    def finished(self) -> list[PointRecord]:
        return [p for p in self.points if p.status == "done"]

    def to_json(self) -> dict:
        base = _without_none({"file": self.base_file, "val": self.base_val.to_json() if self.base_val else None})
        return {"identity": self.identity, "base": base, "points": [p.to_json() for p in self.points]}



    @classmethod
    def from_json(cls, data: object) -> "SweepManifest":
        return _read_back(cls, "ManifestFile", data)
# -- the standard-classifier scenario (negmerge_cli.classifier) ----------------------------------

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

    def to_json(self) -> dict:
        return {"task": self.task, "model": self.model, "num_classes": self.num_classes,
                "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256, "data": self.data,
                "forget_split": self.forget_split, "counts": self.counts, "metrics": self.metrics.to_json(),
                "reference": self.reference.to_json() if self.reference else None,
                "avg_gap_points": self.avg_gap, "seconds": self.seconds, "images_per_s": self.images_per_s}



    @classmethod
    def from_json(cls, data: object) -> "ClassifierEvaluation":
        return _read_back(cls, "ClassifierEvaluationFile", data)
@dataclass(frozen=True)
class ClassifierSearchPoint:
    """The four metrics of original - coef * tau, and its Avg. Gap when there is a reference;
    ``metrics`` is None (and ``error`` says why) when the model's outputs were NaN/Inf there."""

    coef: float
    metrics: Optional[UnlearningMetrics]
    avg_gap: Optional[float] = None
    error: Optional[str] = None

    def to_json(self) -> dict:
        values = self.metrics.to_json() if self.metrics else {}
        return {"coef": self.coef, **values, "avg_gap_points": self.avg_gap, **({"error": self.error} if self.error else {})}



    @classmethod
    def from_json(cls, data: object) -> "ClassifierSearchPoint":
        return _read_back(cls, "ClassifierSearchPointFile", data)
@dataclass
class ClassifierSearchResult:
    """The classifier's lambda search: every point, the rule, and the choice (None: nothing passed)."""

    model: str
    checkpoint: str
    vector: str
    data: dict
    forget_split: dict
    select: str  # retain-bar | gap
    rule: str
    threshold: float
    retain_limit: Optional[float]  # retain-bar: threshold x the original's Dr accuracy
    points: list[ClassifierSearchPoint]
    chosen: Optional[ClassifierSearchPoint]
    reference: Optional[ReferenceMetrics]
    counts: dict
    seconds: float
    task: str = CLASSIFIER_SEARCH_TASK

    @property
    def base(self) -> ClassifierSearchPoint:
        return min(self.points, key=lambda p: abs(p.coef))

    def to_json(self) -> dict:
        return {"task": self.task, "model": self.model, "checkpoint": self.checkpoint, "vector": self.vector,
                "data": self.data, "forget_split": self.forget_split, "select": self.select, "rule": self.rule,
                "threshold": self.threshold, "retain_limit": self.retain_limit,
                "reference": self.reference.to_json() if self.reference else None, "counts": self.counts,
                "points": [p.to_json() for p in self.points],
                "chosen": self.chosen.to_json() if self.chosen else None, "feasible": self.chosen is not None,
                "seconds": self.seconds}
@dataclass(frozen=True)
class Accuracies:
    """Forget and retain top-1 of one model (test split unless said otherwise)."""

    forget: float
    retain: float

    def to_json(self) -> dict:
        return {"forget": self.forget, "retain": self.retain}


@dataclass(frozen=True)
class Outcome:
    """One way of unlearning: the lambda chosen on Val and the test accuracies at it."""

    coef: float  # 0 when no lambda kept the retain bar (nothing was negated)
    forget: Optional[float]
    retain: Optional[float]
    feasible: bool = True
    val_forget: Optional[float] = None
    val_retain: Optional[float] = None
    search: Optional[str] = None  # the search's JSON, relative to the results file
    nonzero_fraction: Optional[float] = None  # of the vector's float elements
    kept: Optional[float] = None  # NegMerge: its non-zero elements out of those the mean's vector has
    vector: Optional[str] = None  # the best single vector: which one

    def to_json(self) -> dict:
        optional = _without_none({"search": self.search, "nonzero_fraction": self.nonzero_fraction,
                                  "kept": self.kept, "vector": self.vector})
        return {"lambda": self.coef, "forget": self.forget, "retain": self.retain, "val_forget": self.val_forget,
                "val_retain": self.val_retain, "feasible": self.feasible, **optional}


@dataclass
class DemoResults:
    """``negmerge demo``'s results.json: the start, every method under the paper's rule (the
    headline), and every method at matched retain accuracy (the extended lambda grid)."""

    model: str
    forget_dataset: str
    retain_dataset: str
    threshold: float
    k: int
    start: Accuracies
    chance: Accuracies
    methods: dict[str, Outcome]
    matched: dict[str, Outcome]
    matched_coefs: list[float]
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def matched_label(self) -> str:
        """How the second table's lambdas were chosen, for titles."""
        return f"matched retain (lambda {min(self.matched_coefs):g} to {max(self.matched_coefs):g})"

    def to_json(self) -> dict:
        return {"task": DEMO_TASK, "model": self.model, "forget_dataset": self.forget_dataset,
                "retain_dataset": self.retain_dataset, "threshold": self.threshold, "k": self.k,
                "start": self.start.to_json(), "chance": self.chance.to_json(),
                "methods": {name: o.to_json() for name, o in self.methods.items()},
                "matched": {"coefs": list(self.matched_coefs),
                            "methods": {name: o.to_json() for name, o in self.matched.items()}},
                "settings": self.settings, "timings": self.timings}

    @classmethod
    def from_json(cls, data: object) -> "DemoResults":
        return _read_back(cls, "DemoFile", data)
