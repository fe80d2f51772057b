"""Typed results of the stages, each with ``to_json()`` (what the tool writes). The files the tool
reads back are checked against their schemas (:mod:`negmerge_cli.results.files`) and built from them
field by field, by name; callers read fields, never dictionary keys."""

from negmerge_cli.results.classifier import (
    CLASSIFIER_EVAL_TASK,
    CLASSIFIER_SEARCH_TASK,
    UNLEARNING_METRICS,
    ClassifierEvaluation,
    ClassifierSearchPoint,
    ClassifierSearchResult,
    ReferenceMetrics,
    UnlearningMetrics,
)
from negmerge_cli.results.demo import DEMO_TASK, Accuracies, DemoResults, Outcome
from negmerge_cli.results.evaluation import (
    SEARCH_RULE,
    SEARCH_TASK,
    ZEROSHOT_TASK,
    DatasetEvaluation,
    Metrics,
    SearchPoint,
    SearchResult,
    SearchRun,
)
from negmerge_cli.results.stream import DROPPING_METHODS, StreamResult
from negmerge_cli.results.sweep import PointRecord, SweepManifest

__all__ = [
    "CLASSIFIER_EVAL_TASK", "CLASSIFIER_SEARCH_TASK", "DEMO_TASK", "DROPPING_METHODS", "SEARCH_RULE", "SEARCH_TASK", "UNLEARNING_METRICS",
    "ZEROSHOT_TASK", "Accuracies", "ClassifierEvaluation", "ClassifierSearchPoint", "ClassifierSearchResult",
    "DatasetEvaluation", "DemoResults", "Metrics", "Outcome", "PointRecord", "ReferenceMetrics", "SearchPoint",
    "SearchResult", "SearchRun", "StreamResult", "SweepManifest", "UnlearningMetrics",
]
