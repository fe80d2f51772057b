"""The schema of a classifier's lambda search file (``eval --vector --json``, task
``classifier_coefficient_search``), read back as a :class:`~negmerge_cli.results.ClassifierSearchResult`.

Apart from :mod:`negmerge_cli.results.files` only for that module's length; its point schema lives there."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from negmerge_cli import results
from negmerge_cli.core.schema import Count, NonNegative, Schema, validate
from negmerge_cli.results.files import ClassifierSearchPointFile, ForgetSplitRecord, ReferenceFile
from negmerge_cli.results.split_file import DatasetIdentity


class ClassifierSearchFile(Schema):
    """A classifier's ``eval --vector --json``: the lambda search. Files written before ``oracle``,
    ``reads`` and ``chosen_at_grid_end`` existed read as their rule implies (``gap`` is the oracle)."""

    task: Literal[results.CLASSIFIER_SEARCH_TASK]
    model: str
    checkpoint: str
    vector: str
    data: DatasetIdentity
    forget_split: ForgetSplitRecord
    select: Literal["retain-bar", "gap"]
    oracle: Optional[bool] = None
    rule: str
    reads: Optional[list[str]] = None
    threshold: NonNegative
    retain_limit: Optional[NonNegative] = None
    reference: Optional[ReferenceFile] = None
    counts: dict[str, Count]
    points: list[ClassifierSearchPointFile] = Field(min_length=1)
    chosen: Optional[ClassifierSearchPointFile] = None
    chosen_at_grid_end: Optional[bool] = None
    seconds: NonNegative = 0.0

    def build(self) -> results.ClassifierSearchResult:
        points = [p.build() for p in self.points]
        chosen = self.chosen.build() if self.chosen else None
        largest = max(p.coef for p in points)
        at_end = self.chosen_at_grid_end if self.chosen_at_grid_end is not None else (
            chosen is not None and chosen.coef == largest and len({p.coef for p in points}) > 1)
        return results.ClassifierSearchResult(
            model=self.model, checkpoint=self.checkpoint, vector=self.vector, data=self.data.model_dump(),
            forget_split=self.forget_split.model_dump(), select=self.select, rule=self.rule,
            threshold=self.threshold, retain_limit=self.retain_limit, points=points, chosen=chosen,
            reference=self.reference.build() if self.reference else None, counts=dict(self.counts),
            seconds=self.seconds, oracle=self.oracle if self.oracle is not None else self.select == "gap",
            reads=tuple(self.reads or ()), at_grid_end=at_end)


def read_search(data: object, what: str = "a classifier search JSON") -> results.ClassifierSearchResult:
    """``data`` (parsed JSON of ``eval --vector --json`` for a classifier) as a ClassifierSearchResult;
    NegmergeError naming ``what`` and the field otherwise."""
    return validate(ClassifierSearchFile, data, what).build()
