"""The forget split (``negmerge split``'s JSON, see negmerge_cli.classifier.split)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    val: Optional[Count] = None  # protocol salun: the hold-out and the unused examples
    unused: Optional[Count] = None


class ForgetSplitFile(Closed):
    format: Literal[FORMAT]
    dataset: DatasetIdentity
    seed: Optional[Count]
    fraction: Optional[Annotated[float, Field(gt=0, lt=1)]]
    classes: Optional[list[Count]]
    counts: SplitCounts
    forget_indices: list[int]
    # protocol salun only (a default-protocol file has none of these three): the validation hold-out
    # and the examples its loader never reads, in neither Dr nor Df
    protocol: Literal["negmerge", "salun"] = "negmerge"
    val_indices: Optional[list[int]] = None
    unused_indices: Optional[list[int]] = None

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
        _check_sorted_within(indices, n_train)
        if len(indices) == n_train:
            raise ValueError(f"forgets all {n_train} training examples (empty Dr)")
        return indices

    @field_validator("val_indices", "unused_indices")
    @classmethod
    def _held_out_in_the_training_set(cls, indices: Optional[list[int]], info: ValidationInfo) -> Optional[list[int]]:
        """Sorted, distinct, within the training set, in no earlier index list."""
        identity = info.data.get("dataset")
        if indices is None or identity is None:
            return indices
        _check_sorted_within(indices, identity.n_train)
        for other in ("forget_indices", "val_indices"):
            taken = set(info.data.get(other) or ())
            for position, index in enumerate(indices):
                if other != info.field_name and index in taken:
                    raise FieldProblem(f"{index} is also in {other} (the lists must be disjoint)", position)
        return indices

    @model_validator(mode="after")
    def _the_protocol_and_a_retain_set(self) -> "ForgetSplitFile":
        held = (self.val_indices, self.unused_indices)
        given = [lists is not None for lists in held]
        if self.protocol == "salun" and not all(given):
            raise ValueError("protocol 'salun' needs both val_indices and unused_indices")
        if self.protocol != "salun" and any(given):
            raise ValueError("val_indices and unused_indices come with protocol 'salun' only")
        if len(self.forget_indices) + sum(len(lists or ()) for lists in held) >= self.dataset.n_train:
            raise ValueError("forget_indices, val_indices and unused_indices leave no training example (empty Dr)")
        return self


def _check_sorted_within(indices: list[int], n_train: int) -> None:
    previous = -1
    for position, index in enumerate(indices):
        if not 0 <= index < n_train:
            raise FieldProblem(f"{index} is outside the training set (0..{n_train - 1})", position)
        if index == previous:
            raise FieldProblem(f"{index} repeats the index before it (the indices must be distinct)", position)
        if index < previous:
            raise FieldProblem(f"{index} comes after {previous} (the indices must be sorted)", position)
        previous = index
