"""Forget splits: which training indices to forget (seeded fraction or whole classes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli import files
from negmerge_cli.errors import UsageError, option


@dataclass
class ForgetSplit:
    dataset: dict
    seed: int
    fraction: Optional[float]
    classes: Optional[list[int]]
    forget_indices: list[int]
    n_train: int

    @property
    def retain_indices(self) -> list[int]:
        forget = set(self.forget_indices)
        return [i for i in range(self.n_train) if i not in forget]

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "seed": self.seed, "fraction": self.fraction, "classes": self.classes,
                "counts": {"forget": len(self.forget_indices), "retain": self.n_train - len(self.forget_indices)},
                "forget_indices": self.forget_indices}

    def save(self, path: str | Path, force: bool = False) -> Path:
        return files.write_json(path, self.to_json(), force=force)


def make_forget_split(data, fraction: Optional[float] = None, classes: Optional[Sequence[int]] = None,
                      seed: int = 0) -> ForgetSplit:
    import torch

    labels = [int(label) for _, label in data.train] if classes is not None else None
    n = data.identity["n_train"]
    if classes is not None:
        chosen = set(int(c) for c in classes)
        indices = [i for i, label in enumerate(labels) if label in chosen]
    else:
        if fraction is None or not 0 < fraction < 1:
            raise UsageError(f"{option('forget_fraction')} {fraction}: must be in (0, 1)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        indices = sorted(order[: round(fraction * n)].tolist())
    if not indices:
        raise UsageError("the forget set is empty")
    return ForgetSplit(data.identity, seed, fraction, sorted(classes) if classes is not None else None,
                       indices, n)


def load_forget_split(path: str | Path, data) -> ForgetSplit:
    text = files.read_text(path, error=UsageError, limit=1 << 26, what=f"{option('forget_split')} file")
    try:
        raw = json.loads(text)
        split = ForgetSplit(raw["dataset"], raw["seed"], raw.get("fraction"), raw.get("classes"),
                            [int(i) for i in raw["forget_indices"]], int(raw["dataset"]["n_train"]))
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path}: not a forget split ({error})") from None
    if split.dataset != data.identity:
        raise UsageError(f"{path}: a forget split of another dataset ({split.dataset.get('name')}, "
                         f"{split.dataset.get('n_train')} training images; {option('forget_split')})")
    return split
