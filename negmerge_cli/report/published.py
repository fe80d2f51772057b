"""The paper's published figures (NegMerge, ICML 2025; docs/reproduce.md, "The figures it should
reproduce"): ViT-B/32, 30 fine-tunes, test accuracy, as fractions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MODEL = "ViT-B/32"
N_FORGET_SETS = 8


@dataclass(frozen=True)
class Published:
    forget: float
    retain: float
    coef: Optional[float] = None


# Averages over the 8 forget sets: Df (forget, lower is better) / Dr (ImageNet).
AVERAGES = {
    "pretrained": Published(0.4813, 0.6333),
    "best_single": Published(0.2363, 0.6060),
    "mean": Published(0.2250, 0.6055),
    "ties": Published(0.2621, 0.6108),
    "magmax": Published(0.2524, 0.6095),
    "negmerge": Published(0.2076, 0.6036),
}
# Single cells: (method, forget dataset).
CELLS = {("negmerge", "cars"): Published(0.2740, 0.6038, 0.90)}


def average(method: str) -> Optional[Published]:
    return AVERAGES.get(method)


def cell(method: str, dataset: str) -> Optional[Published]:
    return CELLS.get((method, dataset))


def to_json() -> dict:
    return {"model": MODEL, "units": "fractions (test acc1)",
            "averages": {m: {"forget_acc1": p.forget, "retain_acc1": p.retain} for m, p in AVERAGES.items()},
            "cells": [{"method": m, "dataset": d, "lambda": p.coef, "forget_acc1": p.forget, "retain_acc1": p.retain}
                      for (m, d), p in CELLS.items()]}
