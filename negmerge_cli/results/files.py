"""The JSON files the stages write and the tool reads back (``report``, ``eval --reference``,
``--base-retain``, a sweep's records), each field with its JSON name and type; ``build()`` makes the
typed result of negmerge_cli.results from it, field by field by name.

The writers are the ``to_json()`` methods of negmerge_cli.results; the tests read what the real
commands write through these schemas, so the two cannot drift apart unnoticed. Unknown fields are
ignored (:class:`~negmerge_cli.core.schema.Schema`): a result written by another version stays readable.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal, Optional

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from negmerge_cli import results
from negmerge_cli.core.schema import Count, FieldProblem, Fraction, NonNegative, Object, Positive, Schema, validate
from negmerge_cli.results.split_file import DatasetIdentity

# -- accuracies (both families), and the CLIP family's zero-shot evaluations and lambda search ---


class MetricsFile(Schema):
    """Accuracies under CLIP_benchmark's keys: a CLIP evaluation's, and every sweep point's Val (both
    families); other scenarios may add metrics (numbers) of their own."""

    model_config = ConfigDict(extra="allow")

    acc1: Fraction
    acc5: Fraction
    mean_per_class_recall: Fraction

    @model_validator(mode="after")
    def _extra_metrics_are_numbers(self) -> "MetricsFile":
        for name, value in (self.model_extra or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FieldProblem(f"expected a number, got {value!r}", name)
        return self

    def build(self) -> results.Metrics:
        return results.Metrics(acc1=self.acc1, acc5=self.acc5, mean_per_class_recall=self.mean_per_class_recall)


class ZeroshotEvaluationFile(Schema):
    """One entry of a CLIP model's ``eval --json`` list."""

    dataset: str
    split_source: Optional[str] = None
    model: str
    pretrained: Optional[str] = None
    task: Literal[results.ZEROSHOT_TASK] = results.ZEROSHOT_TASK
    metrics: MetricsFile
    n_images: Count
    n_classes: Count
    n_templates: Count
    seconds: NonNegative
    images_per_s: NonNegative
    precision: str = "fp32"
    quick_gelu: bool = False
    classes: Optional[dict[str, str]] = None

    def build(self) -> results.DatasetEvaluation:
        return results.DatasetEvaluation(
            dataset=self.dataset, model=self.model, pretrained=self.pretrained, metrics=self.metrics.build(),
            n_images=self.n_images, n_classes=self.n_classes, n_templates=self.n_templates, seconds=self.seconds,
            images_per_s=self.images_per_s, task=self.task, precision=self.precision, quick_gelu=self.quick_gelu,
            split_source=self.split_source, classes=self.classes, extra_metrics=dict(self.metrics.model_extra or {}))


class SearchPointFile(Schema):
    coef: float
    forget_acc1: Fraction
    retain_acc1: Fraction

    def build(self) -> results.SearchPoint:
        return results.SearchPoint(coef=self.coef, forget=self.forget_acc1, retain=self.retain_acc1)


class SearchRunFile(Schema):
    chosen: Optional[SearchPointFile] = None
    points: list[SearchPointFile]
    n_new_evaluations: Count = 0
    seconds: NonNegative = 0.0

    def build(self) -> results.SearchRun:
        return results.SearchRun(chosen=self.chosen.build() if self.chosen else None,
                                 points=[p.build() for p in self.points], new_evaluations=self.n_new_evaluations,
                                 seconds=self.seconds)


class SearchBaseFile(Schema):
    forget_acc1: Fraction
    retain_acc1: Fraction
    n_forget_images: Count
    n_retain_images: Count


class SearchFile(Schema):
    """``eval --vector --json``: the lambda search."""

    task: Literal[results.SEARCH_TASK]
    model: str
    checkpoint: Optional[str] = None
    vector: str
    forget: str
    retain: str
    threshold: NonNegative
    retain_limit: NonNegative
    search: Literal["grid", "fast", "compare"]
    coefs: list[float]
    base: SearchBaseFile
    runs: dict[Literal["grid", "fast"], SearchRunFile]
    n_evaluations: Count
    heads: str
    seconds: NonNegative
    base_retain_acc1: Fraction
    base_retain_source: str
    precision: str = "fp32"
    quick_gelu: bool = False
    split_sources: Optional[dict[str, Optional[str]]] = None
    linearized: bool = False
    linearized_around: Optional[dict[str, str]] = None
    forward_passes: Optional[Count] = None

    @field_validator("runs")
    @classmethod
    def _has_its_primary_run(cls, runs: dict, info: ValidationInfo) -> dict:
        wanted = {"grid": ("grid",), "fast": ("fast",), "compare": ("fast", "grid")}.get(info.data.get("search"), ())
        missing = [kind for kind in wanted if kind not in runs]
        if missing:
            raise ValueError(f"has no '{missing[0]}' run (the search is '{info.data['search']}')")
        return runs

    def build(self) -> results.SearchResult:
        return results.SearchResult(
            model=self.model, checkpoint=self.checkpoint, vector=self.vector, forget=self.forget, retain=self.retain,
            threshold=self.threshold, retain_limit=self.retain_limit, search=self.search, coefs=list(self.coefs),
            base=results.SearchPoint(coef=0.0, forget=self.base.forget_acc1, retain=self.base.retain_acc1),
            n_forget_images=self.base.n_forget_images, n_retain_images=self.base.n_retain_images,
            runs={kind: run.build() for kind, run in self.runs.items()}, evaluations=self.n_evaluations,
            heads_rebuilt=self.heads.startswith("rebuilt"), seconds=self.seconds, base_retain=self.base_retain_acc1,
            base_retain_source=self.base_retain_source, precision=self.precision, quick_gelu=self.quick_gelu,
            split_sources=self.split_sources, linearized_around=self.linearized_around,
            forward_passes=self.forward_passes)


class StoredMetrics(Schema):
    acc1: float  # checked as a fraction by its reader, with a hint about percentages


class StoredEvaluation(Schema):
    """An entry of ``eval --json`` as ``--base-retain`` reads it: only the accuracy it needs."""

    dataset: str
    metrics: StoredMetrics


# -- the standard classifier ---------------------------------------------------------------------


class UnlearningMetricsFile(Schema):
    dr_acc: Fraction
    df_acc: Fraction
    dtest_acc: Fraction
    mia_efficacy: Fraction

    def build(self) -> results.UnlearningMetrics:
        return results.UnlearningMetrics(dr_acc=self.dr_acc, df_acc=self.df_acc, dtest_acc=self.dtest_acc,
                                         mia_efficacy=self.mia_efficacy)


class ReferenceFile(Schema):
    source: str
    kind: Literal["checkpoint", "eval_json"]
    metrics: UnlearningMetricsFile

    def build(self) -> results.ReferenceMetrics:
        return results.ReferenceMetrics(source=self.source, kind=self.kind, metrics=self.metrics.build())


class ForgetSplitRecord(Schema):
    file: str
    sha256: str


class ClassifierEvaluationFile(Schema):
    """A classifier's ``eval --json`` (``eval --reference`` and ``report`` read it)."""

    task: Literal[results.CLASSIFIER_EVAL_TASK]
    model: str
    num_classes: Positive
    checkpoint: str
    checkpoint_sha256: str
    data: DatasetIdentity
    forget_split: ForgetSplitRecord
    counts: dict[str, Count]
    metrics: UnlearningMetricsFile
    reference: Optional[ReferenceFile] = None
    avg_gap_points: Optional[NonNegative] = None
    seconds: NonNegative = 0.0
    images_per_s: NonNegative = 0.0
    val_acc: Optional[Fraction] = None  # the hold-out validation accuracy (a split with val_indices)

    def build(self) -> results.ClassifierEvaluation:
        return results.ClassifierEvaluation(
            model=self.model, num_classes=self.num_classes, checkpoint=self.checkpoint,
            checkpoint_sha256=self.checkpoint_sha256, data=self.data.model_dump(),
            forget_split=self.forget_split.model_dump(), counts=dict(self.counts), metrics=self.metrics.build(),
            reference=self.reference.build() if self.reference else None, avg_gap=self.avg_gap_points,
            seconds=self.seconds, images_per_s=self.images_per_s, val_acc=self.val_acc)


class ClassifierSearchPointFile(Schema):
    """A point of the classifier's lambda search: the four metrics, or none and the error."""

    coef: float
    dr_acc: Optional[Fraction] = None
    df_acc: Optional[Fraction] = None
    dtest_acc: Optional[Fraction] = None
    mia_efficacy: Optional[Fraction] = None
    avg_gap_points: Optional[NonNegative] = None
    error: Optional[str] = None
    val_acc: Optional[Fraction] = None  # the hold-out validation accuracy (a split with val_indices)

    def build(self) -> results.ClassifierSearchPoint:
        values = [getattr(self, name) for name in results.UNLEARNING_METRICS]
        metrics = None if values[0] is None else results.UnlearningMetrics(
            **dict(zip(results.UNLEARNING_METRICS, values)))
        return results.ClassifierSearchPoint(coef=self.coef, metrics=metrics, avg_gap=self.avg_gap_points,
                                             error=self.error, val_acc=self.val_acc)

    @model_validator(mode="after")
    def _all_metrics_or_none(self) -> "ClassifierSearchPointFile":
        given = [getattr(self, name) is not None for name in results.UNLEARNING_METRICS]
        if any(given) and not all(given):
            missing = results.UNLEARNING_METRICS[given.index(False)]
            raise FieldProblem("missing: a point has all four metrics or none", missing)
        return self


# -- the demo and the reproduction's extra files -------------------------------------------------


class AccuraciesFile(Schema):
    forget: Fraction
    retain: Fraction

    def build(self) -> results.Accuracies:
        return results.Accuracies(forget=self.forget, retain=self.retain)


class OutcomeFile(Schema):
    coef: float = Field(alias="lambda")
    forget: Optional[Fraction]
    retain: Optional[Fraction]
    feasible: bool
    val_forget: Optional[Fraction] = None
    val_retain: Optional[Fraction] = None
    search: Optional[str] = None
    nonzero_fraction: Optional[Fraction] = None  # of all the vector's float elements
    kept_fraction: Optional[Fraction] = None  # of the elements the fine-tunes changed
    kept: Optional[Fraction] = None  # the old name of kept_fraction: read, never written
    vector: Optional[str] = None

    @field_validator("search")
    @classmethod
    def _inside_the_demo_folder(cls, search: Optional[str]) -> Optional[str]:
        path = PurePosixPath(search or ".")
        if path.is_absolute() or ".." in path.parts or "\\" in str(path):
            raise ValueError(f"{search!r} is not a path inside the demo's folder")
        return search

    def build(self) -> results.Outcome:
        return results.Outcome(coef=self.coef, forget=self.forget, retain=self.retain, feasible=self.feasible,
                               val_forget=self.val_forget, val_retain=self.val_retain, search=self.search,
                               nonzero_fraction=self.nonzero_fraction,
                               kept_fraction=self.kept_fraction if self.kept_fraction is not None else self.kept,
                               vector=self.vector)


class MatchedFile(Schema):
    coefs: list[float] = Field(min_length=1)
    methods: dict[str, OutcomeFile]


class DemoFile(Schema):
    """``negmerge demo``'s results.json."""

    task: Literal[results.DEMO_TASK]
    model: str
    forget_dataset: str
    retain_dataset: str
    threshold: NonNegative
    k: Positive
    start: AccuraciesFile
    chance: AccuraciesFile
    methods: dict[str, OutcomeFile]
    matched: MatchedFile
    settings: Object = {}
    timings: Object = {}

    def build(self) -> results.DemoResults:
        return results.DemoResults(
            model=self.model, forget_dataset=self.forget_dataset, retain_dataset=self.retain_dataset,
            threshold=self.threshold, k=self.k, start=self.start.build(), chance=self.chance.build(),
            methods={name: o.build() for name, o in self.methods.items()},
            matched={name: o.build() for name, o in self.matched.methods.items()},
            matched_coefs=list(self.matched.coefs), settings=dict(self.settings), timings=dict(self.timings))


class InspectFile(Schema):
    """``inspect --json``, as ``report`` reads it from a method folder: the fraction of non-zeros."""

    tensors: list
    nonzero_fraction: Optional[Fraction]


class ChosenVector(Schema):
    name: str


class ChoiceFile(Schema):
    """The reproduction's ``choice.json`` (docs/reproduce/best_single.py): which single vector won."""

    chosen: ChosenVector
    candidates: list[Object]


# -- a sweep folder's files (negmerge_cli.training.sweep) --------------------------------------------------


class PointRecordFile(Schema):
    """``.records/<point>.json``: one grid point of a sweep."""

    index: Count
    name: str
    status: Literal["running", "done", "failed"]
    hyperparameters: Object
    file: Optional[str] = None
    val: Optional[MetricsFile] = None
    train: Optional[Object] = None
    error: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[Count] = None

    def build(self) -> results.PointRecord:
        return results.PointRecord(
            index=self.index, name=self.name, status=self.status, hyperparameters=dict(self.hyperparameters),
            file=self.file, val=self.val.build() if self.val else None, train=self.train, error=self.error,
            host=self.host, pid=self.pid)


class SweepBaseFile(Schema):
    file: str = "base.safetensors"
    val: Optional[MetricsFile] = None


class SweepFile(Schema):
    """``sweep.json``: what the folder is a sweep of, and the base's Val accuracy once measured."""

    identity: Object = {}
    base: SweepBaseFile = SweepBaseFile()


class ManifestFile(Schema):
    """``manifest.json``: the sweep's identity, its base and every point."""

    identity: Object = {}
    base: SweepBaseFile = SweepBaseFile()
    points: list[PointRecordFile] = []

    def build(self) -> results.SweepManifest:
        return results.SweepManifest(identity=dict(self.identity), base_file=self.base.file,
                                     base_val=self.base.val.build() if self.base.val else None,
                                     points=[p.build() for p in self.points])


_SCHEMA_OF = {
    results.DatasetEvaluation: ZeroshotEvaluationFile, results.SearchResult: SearchFile,
    results.PointRecord: PointRecordFile, results.SweepManifest: ManifestFile,
    results.ClassifierEvaluation: ClassifierEvaluationFile, results.ClassifierSearchPoint: ClassifierSearchPointFile,
    results.DemoResults: DemoFile,
}


def read_back(result_type: type, data: object, what: str | None = None):
    """``data`` (parsed JSON that a stage wrote) as ``result_type``, built by its file's schema;
    NegmergeError naming ``what`` and the field otherwise."""
    return validate(_SCHEMA_OF[result_type], data, what or f"{result_type.__name__} JSON").build()
