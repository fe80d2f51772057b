"""Published figures to put beside ours. CLIP (NegMerge, ICML 2025; docs/reproduce.md, "The figures
it should reproduce"): ViT-B/32, 30 fine-tunes, test accuracy, as fractions. Classifiers
(docs/reproduce-classifier.md): ResNet-18 on CIFAR-10 with 10% random forgetting, in percent and
points as that literature prints them, each row with its source and status; NegMerge's own rows
there come from secondary sources."""

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


PAPER_DATASETS = ("cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn")


def same_setting(model: Optional[str], datasets) -> bool:
    """Rows of the paper's CLIP setting: its model (OpenCLIP's ViT-B-32, any tag) on its forget sets."""
    name = (model or "").lower().replace("/", "-")
    return name.startswith("vit-b-32") and bool(datasets) and all(d in PAPER_DATASETS for d in datasets)


def classifier_same_setting(model: Optional[str], datasets) -> bool:
    """Rows of the classifier literature's setting (ResNet-18 on CIFAR-10; the 10% random forget
    split is not recorded in a report's rows)."""
    return (model or "").lower().startswith("resnet18") and list(datasets) == [CLASSIFIER_DATASET]


def average(method: str) -> Optional[Published]:
    return AVERAGES.get(method)


def cell(method: str, dataset: str) -> Optional[Published]:
    return CELLS.get((method, dataset))


def to_json() -> dict:
    return {"model": MODEL, "units": "fractions (test acc1)",
            "averages": {m: {"forget_acc1": p.forget, "retain_acc1": p.retain} for m, p in AVERAGES.items()},
            "cells": [{"method": m, "dataset": d, "lambda": p.coef, "forget_acc1": p.forget, "retain_acc1": p.retain}
                      for (m, d), p in CELLS.items()]}


# -- the classifier scenario -------------------------------------------------------------------

CLASSIFIER_SETTING = "ResNet-18, CIFAR-10, 10% random forgetting"
CLASSIFIER_DATASET = "cifar10"
SALUN_TABLE = "SalUn (Fan et al., ICLR 2024, arXiv 2310.12508 v5), Table 3, random data forgetting 10%"
NEGMERGE_TABLE = "NegMerge (Kim et al., ICML 2025), classifier table, as quoted by secondary sources"
# what a row's figures are, and its mark in Markdown
TRANSCRIBED = "transcribed"  # copied from the paper's table by a reproduction; not rechecked against the PDF
SECONDARY = "secondary"  # from secondary sources, not the paper's own table: unverified
NOT_TRANSCRIBED = "not transcribed"  # the table has the row; its figures are not copied here
MARKS = {TRANSCRIBED: "\u2021", SECONDARY: "\u2020", NOT_TRANSCRIBED: ""}
STATUS_MEANINGS = {TRANSCRIBED: "copied from the paper's table by a reproduction, not rechecked against it",
                   SECONDARY: "from secondary sources, not the paper's own table: unverified",
                   NOT_TRANSCRIBED: "the table has the row; its figures are not copied here"}
# which data a method trains on: NegMerge's fine-tunes see only Df, so its fair comparison is the Df group
DATA_GROUPS = {"reference": "retrained from scratch on Dr", "retain": "unlearning with Dr (and Df)",
               "forget": "unlearning with Df only"}


@dataclass(frozen=True)
class PublishedUnlearning:
    """Dr / Df / Dtest accuracy and MIA-efficacy in %, Avg. Gap in points (None: not given here).
    SalUn's table prints UA = 100 - Df accuracy; Df accuracy is what is kept here."""

    title: str
    dr: Optional[float]
    df: Optional[float]
    dtest: Optional[float]
    mia: Optional[float]
    avg_gap: Optional[float]
    data: str  # a DATA_GROUPS key
    source: str
    status: str = TRANSCRIBED

    @property
    def secondary(self) -> bool:
        return self.status == SECONDARY


def _salun(title, dr, df, dtest, mia, gap, data, status=TRANSCRIBED):
    return PublishedUnlearning(title, dr, df, dtest, mia, gap, data, SALUN_TABLE, status)


# SalUn's Table 3 rows (mean of 10 trials), as DESIGN.md section 9 transcribes them: each Avg. Gap is
# the mean |x - Retrain's x| of its four figures. The rows left "not transcribed" are in the
# table (its baselines: FT, RL, GA, IU, BE, BS, l1-sparse; and SalUn-soft) but not copied here.
CLASSIFIER = {
    "retrain": _salun("Retrain", 100.00, 94.76, 94.26, 12.88, 0.0, "reference"),
    "finetune_retain": _salun("FT (fine-tune on Dr)", 99.88, 99.37, 94.06, 2.70, 3.78, "retain"),
    "random_labels": _salun("RL (random labels)", 99.67, 92.39, 92.83, 37.36, 7.15, "retain"),
    "influence_unlearning": _salun("IU (influence unlearning)", None, None, None, None, None, "retain", NOT_TRANSCRIBED),
    "l1_sparse": _salun("l1-sparse", 97.74, 95.81, 91.59, 9.84, 2.26, "retain"),
    "salun": _salun("SalUn", 99.62, 97.15, 93.93, 14.39, 1.15, "retain"),
    "salun_soft": _salun("SalUn-soft", None, None, None, None, None, "retain", NOT_TRANSCRIBED),
    "gradient_ascent": _salun("GA (gradient ascent)", 99.50, 99.31, 94.01, 1.70, 4.12, "forget"),
    "boundary_shrink": _salun("BS (boundary shrink)", None, None, None, None, None, "forget", NOT_TRANSCRIBED),
    "boundary_expanding": _salun("BE (boundary expanding)", None, None, None, None, None, "forget", NOT_TRANSCRIBED),
    "negmerge": PublishedUnlearning("NegMerge", None, None, None, None, 1.07, "forget", NEGMERGE_TABLE, SECONDARY),
    "best_single": PublishedUnlearning("best single task vector", None, None, None, None, 1.62, "forget",
                                       NEGMERGE_TABLE, SECONDARY),
    "mean": PublishedUnlearning("uniform mean", None, None, None, None, 1.75, "forget", NEGMERGE_TABLE, SECONDARY),
}


def classifier_rows(data: str) -> list[tuple[str, PublishedUnlearning]]:
    return [(key, p) for key, p in CLASSIFIER.items() if p.data == data]


def fraction(percent: Optional[float]) -> Optional[float]:
    """A published percentage as the fraction every file the tool writes holds (None stays None)."""
    return None if percent is None else round(percent / 100, 6)


def classifier_to_json() -> dict:
    """As fractions (and points), the units of every JSON the tool writes."""
    return {"setting": CLASSIFIER_SETTING, "units": "fractions (accuracy, MIA-efficacy); points (avg_gap_points)",
            "statuses": STATUS_MEANINGS,
            "rows": [{"method": key, "title": p.title, "dr_acc": fraction(p.dr), "df_acc": fraction(p.df),
                      "dtest_acc": fraction(p.dtest), "mia_efficacy": fraction(p.mia), "avg_gap_points": p.avg_gap,
                      "trains_on": DATA_GROUPS[p.data], "source": p.source, "status": p.status,
                      "secondary_sources": p.secondary} for key, p in CLASSIFIER.items()]}
