"""What a report holds: one row per method and forget dataset, the search curves behind them, and
the averages over datasets. Accuracies and every other fraction stay fractions (as every JSON the
tool writes); only the Markdown renderer turns them into percent."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from negmerge_cli.results import DROPPING_METHODS, SearchResult

HEADLINE = ""  # the setting of rows chosen by the paper's rule on its grid
HEADLINE_ID = "paper"  # its name in CSV and JSON
HEADLINE_TITLE = "lambda chosen by the paper's rule"
# Optional metrics (keys in the JSON -> column titles): the classifier scenario's Dtest accuracy and
# MIA-efficacy (fractions, shown in % in Markdown) and Avg. Gap (percentage points).
OPTIONAL_METRICS = {"dtest_acc": "Dtest %", "mia_efficacy": "MIA-efficacy %", "avg_gap_points": "Avg. Gap (points)"}
FRACTION_METRICS = {"dtest_acc", "mia_efficacy"}
METHOD_ORDER = ("pretrained", "original", "retrain", "best_single", "sum", "mean", "ties", "dare", "magmax", "negmerge")
DATASET_ORDER = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn")


@dataclass(frozen=True)
class ResultRow:
    """One method on one forget dataset under one setting (how lambda was chosen)."""

    method: str
    dataset: str
    forget: Optional[float] = None  # forget top-1 (lower is better)
    retain: Optional[float] = None  # retain top-1
    split: str = "test"  # where the two accuracies come from: test (eval), or val (the search's chosen point)
    coef: Optional[float] = None  # the chosen lambda; None for the unmodified model
    nonzero: Optional[float] = None  # non-zero: of all the vector's float elements (inspect's nonzero_fraction)
    kept: Optional[float] = None  # kept: of the elements the fine-tunes changed (DROPPING_METHODS only)
    metrics: dict[str, float] = field(default_factory=dict)  # optional metrics (OPTIONAL_METRICS keys)
    setting: str = HEADLINE
    vector: Optional[str] = None  # the best single vector's name
    sources: tuple[str, ...] = ()
    trial: Optional[str] = None  # the trial (OUT/trial-K) the row comes from (report.trials)
    n: Optional[int] = None  # the number of trials a mean row averages; None: one run, no trials
    spread: dict[str, float] = field(default_factory=dict)  # sample std of each averaged figure (JSON names)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.setting, self.method, self.dataset

    def merged(self, other: "ResultRow") -> "ResultRow":
        """This row completed by ``other`` (same key): test accuracies win over a search's."""
        take_accuracy = self.forget is None or (self.split != "test" and other.split == "test" and other.forget is not None)
        accuracy = {"forget": other.forget, "retain": other.retain, "split": other.split} if take_accuracy else {}
        return replace(self, **accuracy,
                       coef=self.coef if self.coef is not None else other.coef,
                       nonzero=self.nonzero if self.nonzero is not None else other.nonzero,
                       kept=self.kept if self.kept is not None else other.kept,
                       metrics={**other.metrics, **self.metrics}, vector=self.vector or other.vector,
                       sources=self.sources + other.sources)

    def to_json(self) -> dict:
        trials = {"n_trials": self.n, "std": dict(self.spread)} if self.n is not None else {}
        return {"setting": self.setting or HEADLINE_ID, "method": self.method, "dataset": self.dataset,
                "split": self.split, "lambda": self.coef, "forget_acc1": self.forget, "retain_acc1": self.retain,
                "nonzero_fraction": self.nonzero, "kept_fraction": self.kept, "metrics": dict(self.metrics),
                **trials, "vector": self.vector, "sources": list(self.sources)}


@dataclass(frozen=True)
class Curve:
    """A search (every lambda evaluated) behind a row, for the plots."""

    method: str
    dataset: str
    search: SearchResult
    setting: str = HEADLINE


@dataclass(frozen=True)
class Average:
    """A method's mean forget and retain accuracy over the datasets where both are known."""

    setting: str
    method: str
    forget: float
    retain: float
    datasets: int
    complete: bool  # every dataset of the report counted

    def to_json(self) -> dict:
        return {"setting": self.setting or HEADLINE_ID, "method": self.method, "forget_acc1": self.forget,
                "retain_acc1": self.retain, "n_datasets": self.datasets, "complete": self.complete}


@dataclass
class Report:
    rows: list[ResultRow]
    curves: list[Curve] = field(default_factory=list)
    model: Optional[str] = None
    retain_dataset: Optional[str] = None
    titles: dict[str, str] = field(default_factory=dict)  # setting id -> what a person reads (Markdown)

    @property
    def settings(self) -> list[str]:
        return _unique(r.setting for r in self.rows)

    @property
    def datasets(self) -> list[str]:
        return sorted(_unique(r.dataset for r in self.rows), key=_order(DATASET_ORDER))

    def methods(self, setting: str) -> list[str]:
        return sorted(_unique(r.method for r in self.rows if r.setting == setting), key=_order(METHOD_ORDER))

    def row(self, setting: str, method: str, dataset: str) -> Optional[ResultRow]:
        return next((r for r in self.rows if r.key == (setting, method, dataset)), None)

    def metric_keys(self) -> list[str]:
        """The optional metrics some row has, in OPTIONAL_METRICS order, then any others."""
        present = _unique(key for r in self.rows for key in r.metrics)
        return sorted(present, key=_order(tuple(OPTIONAL_METRICS)))

    def average(self, setting: str, method: str) -> Optional[Average]:
        rows = [r for r in self.rows if r.setting == setting and r.method == method]
        complete = [r for r in rows if r.forget is not None and r.retain is not None]
        if not complete:
            return None
        return Average(setting, method, sum(r.forget for r in complete) / len(complete),
                       sum(r.retain for r in complete) / len(complete), len(complete),
                       len(complete) == len(self.datasets))

    def splits(self) -> set[str]:
        return {r.split for r in self.rows if r.forget is not None}

    @property
    def has_trials(self) -> bool:
        """Some row is the mean of repeated runs (report.trials)."""
        return any(r.n is not None for r in self.rows)

    @property
    def is_classifier(self) -> bool:
        """Rows from the classifier scenario (only its eval writes MIA-efficacy): its published
        figures, not CLIP's, belong beside them."""
        return "mia_efficacy" in self.metric_keys()


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _order(known: tuple[str, ...]):
    """Sort key: the known names in their order, then the others as first seen (stable sort)."""
    return lambda name: known.index(name) if name in known else len(known)


@dataclass
class Found:
    """What one PATH holds: rows, curves, the models and retain sets named, the settings' titles."""

    rows: list[ResultRow] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    retain: list[str] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)

    def add(self, other: "Found") -> "Found":
        self.rows += other.rows
        self.curves += other.curves
        self.models += other.models
        self.retain += other.retain
        self.titles.update(other.titles)
        return self


def with_kept(rows: list[ResultRow]) -> list[ResultRow]:
    """``kept`` for the methods that drop elements, where the mean of the same vectors is there
    (same setting and dataset): their non-zero fraction over the mean's (the elements the fine-tunes
    changed); ``kept`` of any other method is dropped (it zeroes nothing the fine-tunes changed)."""
    means = {(r.setting, r.dataset): r.nonzero for r in rows if r.method == "mean" and r.nonzero}
    done = []
    for row in rows:
        kept = row.kept
        if row.method not in DROPPING_METHODS:
            kept = None
        elif kept is None and row.nonzero is not None and (row.setting, row.dataset) in means:
            kept = min(1.0, row.nonzero / means[row.setting, row.dataset])
        done.append(replace(row, kept=kept) if kept != row.kept else row)
    return done
