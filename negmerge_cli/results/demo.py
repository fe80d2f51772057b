"""The offline demo's results: accuracies before and after each method, and the matched-retain
table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from negmerge_cli.results.common import without_none

DEMO_TASK = "demo"


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
    # non-zero: the vector's non-zero elements out of all its float elements (what inspect reports)
    nonzero_fraction: Optional[float] = None
    # kept (methods that drop elements: negmerge, ties, dare): the merge's non-zero elements out of
    # those the fine-tunes changed (non-zero in the mean of the same vectors); read from "kept" too
    kept_fraction: Optional[float] = None
    vector: Optional[str] = None  # the best single vector: which one

    def to_json(self) -> dict:
        optional = without_none({"search": self.search, "nonzero_fraction": self.nonzero_fraction,
                                  "kept_fraction": self.kept_fraction, "vector": self.vector})
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
    # how alike the k task vectors are: norms, cosine similarity, sign agreement (demo/agreement.py)
    vectors: dict = field(default_factory=dict)

    @property
    def vary(self) -> str:
        """What the k fine-tunes differ in: "seeds" or "hyperparameters" (files before the option: seeds)."""
        return self.settings.get("vary", "seeds")

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
                "settings": self.settings, "timings": self.timings, **({"vectors": self.vectors} if self.vectors else {})}

