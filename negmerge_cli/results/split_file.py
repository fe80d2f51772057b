"""The forget split (``negmerge split``'s JSON, see negmerge_cli.classifier.split)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from negmerge_cli.core.schema import Closed, Count, FieldProblem, Positive, Schema

FORMAT = "negmerge.forget_split/1"  # the "format" field of every forget split file


class DatasetIdentity(Schema):
    """What the split was made for; compared with the data it is used with (extra keys are kept:
    they are part of the identity a newer version may record)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    root: Optional[str] = None
    n_train: Positive
    n_test: Count
    num_classes: Positive
    train_labels_sha256: str


class SplitCounts(Closed):
    forget: Count
    retain: Count
    train: Count


class ForgetSplitFile(Closed):
    format: Literal[FORMAT]
    dataset: DatasetIdentity
    seed: Optional[Count]
    fraction: Optional[Annotated[float, Field(gt=0, lt=1)]]
    classes: Optional[list[Count]]
    counts: SplitCounts
    forget_indices: list[int]

    @field_validator("classes")
    @classmethod
    def _classes_exist(cls, classes: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        identity = info.data.get("dataset")
        for position, label in enumerate(classes or ()):
            if identity is not None and label >= identity.num_classes:
                raise FieldProblem(f"class {label} does not exist (labels 0..{identity.num_classes - 1})", position)
        return classes

    @field_validator("forget_indices")
    @classmethod
    def _indices_in_the_training_set(cls, indices: list[int], info: ValidationInfo) -> list[int]:
        """Sorted, distinct, within the training set, and neither nothing nor everything."""
        identity = info.data.get("dataset")
        if identity is None:
            return indices  # the identity's own error is reported
        n_train = identity.n_train
        if not indices:
            raise ValueError("is empty (the split forgets nothing)")
        previous = -1
        for position, index in enumerate(indices):
            if not 0 <= index < n_train:
                raise FieldProblem(f"{index} is outside the training set (0..{n_train - 1})", position)
            if index == previous:
                raise FieldProblem(f"{index} repeats the index before it (the indices must be distinct)", position)
            if index < previous:
                raise FieldProblem(f"{index} comes after {previous} (the indices must be sorted)", position)
            previous = index
        if len(indices) == n_train:
            raise ValueError(f"forgets all {n_train} training examples (empty Dr)")
        return indices
