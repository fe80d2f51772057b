"""A sweep folder's records: one per grid point, and the manifest of them all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from negmerge_cli.results.common import without_none
from negmerge_cli.results.evaluation import Metrics


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
        return without_none(values)


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
        base = without_none({"file": self.base_file, "val": self.base_val.to_json() if self.base_val else None})
        return {"identity": self.identity, "base": base, "points": [p.to_json() for p in self.points]}



