"""A report as Markdown (the paper's table: percent, for a person), CSV or JSON (one row per method
and dataset; one unit per file: fractions, as every JSON the tool writes, and the Avg. Gap in
points; CSV rounded to 6 decimals)."""

from __future__ import annotations

import csv
import io
import math
from typing import Optional

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.escape import json_text, number, spreadsheet_text
from negmerge_cli.core.escape import markdown as md
from negmerge_cli.report import classifier_table, trials
from negmerge_cli.report import published as paper
from negmerge_cli.report.rows import (
    FRACTION_METRICS,
    HEADLINE,
    HEADLINE_ID,
    HEADLINE_TITLE,
    OPTIONAL_METRICS,
    Average,
    Report,
    ResultRow,
)
from negmerge_cli.results import DROPPING_METHODS

FORMATS = ("markdown", "csv", "json")
CSV_DECIMALS = 6  # accuracies of at most a million images; float32 noise beyond
BN_NOTE = ("BatchNorm running statistics: left out of the vectors by default (`vector --buffers exclude`: the "
           "original's are kept); the rows marked (BatchNorm statistics in the vectors) merge the plain checkpoint "
           "differences (`--buffers include`), as the released CLIP code would.")
TRIALS_NOTE = ("Over trials (OUT/trial-K folders): mean \u00b1 sample standard deviation (n - 1 in the "
               "denominator); Trials: n, the number averaged.")
SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".json": "json"}
DATASET_TITLES = {"cars": "Cars", "dtd": "DTD", "eurosat": "EuroSAT", "gtsrb": "GTSRB", "mnist": "MNIST",
                  "resisc45": "RESISC45", "sun397": "SUN397", "svhn": "SVHN", "imagenet": "ImageNet"}
METHOD_TITLES = {"pretrained": "Pretrained", "best_single": "Task Arithmetic (best single)",
                 "mean": "Uniform Merge (mean)", "sum": "Task Arithmetic (sum)", "ties": "TIES-Merging",
                 "dare": "DARE", "magmax": "MagMax", "negmerge": "NegMerge",
                 # the classifier reproduction's rows
                 "original": "Original", "retrain": "Retrain", "finetune_retain": "Fine-tune on Dr",
                 "gradient_ascent": "Gradient ascent", "random_labels": "Random labels", "l1_sparse": "l1-sparse",
                 "salun": "SalUn", "wrong_labels": "Wrong labels"}
BN_SUFFIX = "_bn"  # the classifier reproduction's merges of vectors that keep the BatchNorm statistics


def check_format(name: str) -> str:
    """A format's name, or the suffix that names it for -o (md, csv, json), as the format's name."""
    found = name if name in FORMATS else SUFFIX_FORMATS.get("." + name.lower().lstrip("."))
    if found is None:
        raise UsageError(f"{option('format')} {name!r}: choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]} "
                         "(or md, as -o's suffix says it)")
    return found


def render(report: Report, form: str, with_published: bool = False) -> str:
    return {"markdown": markdown, "csv": to_csv, "json": to_json}[check_format(form)](report, with_published)


def _clip_published(report: Report, with_published: bool) -> bool:
    """The paper's CLIP figures go in parentheses beside CLIP rows of its own setting only (its
    model, its forget sets); beside any other rows they are a table of their own, marked."""
    return with_published and not report.is_classifier and paper.same_setting(report.model, report.datasets)


def _setting_title(report: Report, setting: str) -> str:
    return md(report.titles.get(setting) or (HEADLINE_TITLE if setting == HEADLINE else setting))


def _averaged(report: Report) -> bool:
    """Averages only over several datasets (one would repeat its row)."""
    return len(report.datasets) > 1


# -- Markdown ------------------------------------------------------------------------------------


def markdown(report: Report, with_published: bool = False) -> str:
    """The paper's tables. Every name from the results (datasets, methods, settings, the model)
    goes through :func:`~negmerge_cli.core.escape.markdown`, every number through ``number``."""
    parts = []
    clip_published = _clip_published(report, with_published)
    for setting in report.settings:
        if setting != HEADLINE or len(report.settings) > 1:
            parts.append(f"### {_setting_title(report, setting)}\n")
        parts.append(_accuracy_table(report, setting, clip_published))
        parts.append(_lambda_table(report, setting, clip_published))
        parts.append(_metrics_table(report, setting))
    if with_published and report.is_classifier:
        parts.append(classifier_table.markdown(_mismatch(report, paper.classifier_same_setting(report.model,
                                                                                                 report.datasets))))
    elif with_published and not (clip_published and _averaged(report)):
        parts.append(_clip_published_table(report))
    return "\n".join(p for p in parts if p)


def _accuracy_table(report: Report, setting: str, with_published: bool) -> str:
    datasets, methods = report.datasets, report.methods(setting)
    averages = _averaged(report)
    splits = {r.split for r in report.rows if r.setting == setting and r.forget is not None}
    test = "Accuracy" if report.is_classifier else "Test accuracy"
    what = {frozenset({"test"}): test, frozenset({"val"}): "Val accuracy at the chosen lambda",
            frozenset({"search"}): "Accuracy at the chosen lambda, as the search measured it"}.get(
        frozenset(splits), f"{test} (Val where marked v: no test result given)")
    retain = _title(report.retain_dataset) if report.retain_dataset else "retain set"
    model = f" ({md(report.model)})" if report.model else ""
    lines = [f"{what} (%){model}: Df = forget set (lower is better), Dr = {retain}.", ""]
    header = ["Method"] + [f"{_title(d)} {x}" for d in datasets for x in ("Df", "Dr")]
    header += ["Avg Df", "Avg Dr"] if averages else []
    header += ["Trials"] if report.has_trials else []
    lines += _header(header)
    for method in methods:
        cells = [_method(method)]
        for dataset in datasets:
            row = report.row(setting, method, dataset)
            known = paper.cell(method, dataset) if with_published and setting == HEADLINE else None
            cells += [_accuracy(row, "forget", known and known.forget), _accuracy(row, "retain", known and known.retain)]
        if averages:
            cells += _average_cells(report.average(setting, method),
                                    paper.average(method) if with_published and setting == HEADLINE else None)
        if report.has_trials:
            cells.append(", ".join(sorted({str(r.n or 1) for r in report.rows if r.key[:2] == (setting, method)})))
        lines.append(_line(cells))
    notes = [TRIALS_NOTE] if report.has_trials else []
    if any(m.endswith(BN_SUFFIX) for m in methods):
        notes.append(BN_NOTE)
    if averages and any(a and not a.complete for a in (report.average(setting, m) for m in methods)):
        notes.append("\\* average over the datasets present so far.")
    if with_published and setting == HEADLINE and averages:
        notes.append(f"In parentheses: published ({paper.MODEL}, 30 fine-tunes; averages over the paper's "
                     f"{paper.N_FORGET_SETS} forget sets).")
    elif with_published and setting == HEADLINE:
        notes.append(f"In parentheses: published ({paper.MODEL}, 30 fine-tunes); the paper's averages are below.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _accuracy(row: Optional[ResultRow], which: str, published: Optional[float]) -> str:
    value = getattr(row, which) if row else None
    text = _spread(row, which, _pct(value), _pct) + ("v" if row and value is not None and row.split == "val" else "")
    return text + (f" ({_pct(published)})" if published is not None else "")


def _spread(row: Optional[ResultRow], attribute: str, text: str, form) -> str:
    """``text`` (the row's figure, or its mean over trials) with `` ± std`` where it has one."""
    std = row.spread.get(trials.FIELDS.get(attribute, attribute)) if row is not None else None
    return text if std is None else f"{text} \u00b1 {form(std)}"


def _average_cells(average: Optional[Average], published) -> list[str]:
    mark = "" if average is None or average.complete else "*"
    cells = [_pct(average and average.forget) + mark, _pct(average and average.retain) + mark]
    if published is not None:
        cells = [f"{cells[0]} ({_pct(published.forget)})", f"{cells[1]} ({_pct(published.retain)})"]
    return cells


def _lambda_table(report: Report, setting: str, with_published: bool) -> str:
    datasets = report.datasets
    methods = [m for m in report.methods(setting)
               if any(r.coef is not None or r.kept is not None for r in report.rows if r.key[:2] == (setting, m))]
    if not methods:
        return ""
    where = "on Val" if report.splits() & {"val", "test"} and not report.is_classifier else "by the search's rule"
    kept = any(r.kept is not None for r in report.rows if r.setting == setting)
    lines = [f"Chosen lambda ({where})" + (f"; kept: of the elements the fine-tunes changed (non-zero in the mean "
                                            f"of the same vectors), the fraction the merge kept "
                                            f"({', '.join(m for m in DROPPING_METHODS)}: the methods that drop "
                                            f"elements):" if kept else ":"), ""]
    lines += _header(["Method"] + [_title(d) for d in datasets])
    for method in methods:
        cells = [_method(method)]
        for dataset in datasets:
            row = report.row(setting, method, dataset)
            text = _spread(row, "coef", number(row and row.coef), number)
            if row is not None and row.kept is not None:
                text += f" (kept {number(row.kept, '.1f', scale=100)}%)"
            known = paper.cell(method, dataset) if with_published and setting == HEADLINE else None
            if known is not None and known.coef is not None:
                text += f" (paper {number(known.coef)})"
            cells.append(text)
        lines.append(_line(cells))
    return "\n".join(lines) + "\n"


def _metrics_table(report: Report, setting: str) -> str:
    keys = report.metric_keys()
    rows = [r for r in report.rows if r.setting == setting and r.metrics]
    if not keys or not rows:
        return ""
    datasets = report.datasets
    lines = _header(["Method"] + [f"{_title(d)} {OPTIONAL_METRICS.get(k) or md(k)}" for d in datasets for k in keys])
    for method in report.methods(setting):
        cells = [_method(method)]
        for dataset in datasets:
            row = report.row(setting, method, dataset)
            cells += [_spread(row, k, _metric(k, row.metrics.get(k) if row else None), lambda v, k=k: _metric(k, v))
                      for k in keys]
        lines.append(_line(cells))
    return "\n".join(lines) + "\n"


def _clip_published_table(report: Report) -> str:
    """The paper's CLIP figures apart from ours, saying when they come from another setting."""
    lines = [f"Published ({paper.MODEL}, 30 fine-tunes, test accuracy %; averages over the paper's "
             f"{paper.N_FORGET_SETS} forget sets, Dr = ImageNet)."
             + _mismatch(report, paper.same_setting(report.model, report.datasets)), ""]
    lines += _header(["Method", "forget set", "lambda", "Df", "Dr"])
    for method, known in paper.AVERAGES.items():
        lines.append(_line([_method(method), f"average of {paper.N_FORGET_SETS}", "-", _pct(known.forget),
                            _pct(known.retain)]))
    for (method, dataset), known in paper.CELLS.items():
        lines.append(_line([_method(method), _title(dataset), number(known.coef), _pct(known.forget), _pct(known.retain)]))
    return "\n".join(lines) + "\n"


def _mismatch(report: Report, same: bool) -> str:
    if same:
        return ""
    ours = f"{md(report.model or 'another model')} on {', '.join(_title(d) for d in report.datasets)}"
    return f" **Another setting than the rows above ({ours}): not comparable number for number.**"


def _title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset) or md(dataset)


def _method(method: str) -> str:
    if method.endswith(BN_SUFFIX) and method[:-len(BN_SUFFIX)] in METHOD_TITLES:
        return METHOD_TITLES[method[:-len(BN_SUFFIX)]] + " (BatchNorm statistics in the vectors)"
    return METHOD_TITLES.get(method) or md(method)


def _header(columns: list[str]) -> list[str]:
    return [_line(columns), "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]


def _line(cells: list[str]) -> str:
    """A table row of cells already in Markdown (names escaped where they were put in)."""
    return "| " + " | ".join(cells) + " |"


def _pct(value: Optional[float]) -> str:
    return number(value, scale=100)


def _number(value: Optional[float]) -> str:
    return number(value)


def _metric(key: str, value: Optional[float]) -> str:
    return _pct(value) if key in FRACTION_METRICS else _number(value)


# -- CSV and JSON --------------------------------------------------------------------------------


def _records(report: Report, with_published: bool) -> list[dict]:
    """One flat record per row, then per average over several datasets (dataset ``average``): the
    CSV's lines; with the published figures, beside ours (``published_*``) where they were measured
    in the same setting, else one record per published figure (setting ``published``)."""
    keys = report.metric_keys()
    records = []
    clip_published = _clip_published(report, with_published)
    beside = lambda known: _published_fields(known) if clip_published else {}
    for setting in report.settings:
        name = setting or HEADLINE_ID
        for method in report.methods(setting):
            for dataset in report.datasets:
                row = report.row(setting, method, dataset)
                if row is None:
                    continue
                records.append({"setting": name, "method": method, "dataset": dataset, "split": row.split,
                                "lambda": row.coef, "forget_acc1": row.forget, "retain_acc1": row.retain,
                                "nonzero_fraction": row.nonzero, "kept_fraction": row.kept, "n_datasets": None,
                                **{k: row.metrics.get(k) for k in keys}, **_trial_fields(report, row, keys),
                                "vector": row.vector,
                                **beside(paper.cell(method, dataset) if setting == HEADLINE else None)})
            average = report.average(setting, method) if _averaged(report) else None
            if average is not None:
                records.append({"setting": name, "method": method, "dataset": "average",
                                "split": "/".join(sorted(report.splits())), "lambda": None,
                                "forget_acc1": average.forget, "retain_acc1": average.retain, "nonzero_fraction": None,
                                "kept_fraction": None, "n_datasets": average.datasets, **{k: None for k in keys},
                                "vector": None, **beside(paper.average(method) if setting == HEADLINE else None)})
    if with_published and report.is_classifier:
        records += classifier_table.records(_blank(keys, False) | _trial_fields(report, None, keys), keys)
    elif with_published and not (clip_published and _averaged(report)):
        records += _clip_published_records(keys, clip_published)
    return records


def _blank(keys: list[str], clip_published: bool) -> dict:
    return {"setting": "published", "split": "test", "lambda": None, "nonzero_fraction": None, "kept_fraction": None,
            "n_datasets": None, **{k: None for k in keys}, "vector": None, **({} if not clip_published else _published_fields(None))}


def _clip_published_records(keys: list[str], clip_published: bool) -> list[dict]:
    records = [_blank(keys, clip_published) | {"method": m, "dataset": "average", "forget_acc1": p.forget,
                                                "retain_acc1": p.retain, "n_datasets": paper.N_FORGET_SETS}
               for m, p in paper.AVERAGES.items()]
    return records + [_blank(keys, clip_published) | {"method": m, "dataset": d, "lambda": p.coef, "forget_acc1": p.forget,
                                                       "retain_acc1": p.retain} for (m, d), p in paper.CELLS.items()]


def _trial_fields(report: Report, row: Optional[ResultRow], keys: list[str]) -> dict:
    """With trials: n and each figure's sample std, beside its mean and in its unit (CSV's columns)."""
    if not report.has_trials:
        return {}
    names = ["lambda", "forget_acc1", "retain_acc1", *keys]
    return {"n_trials": row and row.n, **{f"{name}_std": row and row.spread.get(name) for name in names}}


def _published_fields(known) -> dict:
    return {"published_lambda": known and known.coef, "published_forget_acc1": known and known.forget,
            "published_retain_acc1": known and known.retain}


def to_csv(report: Report, with_published: bool = False) -> str:
    records = _records(report, with_published)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in records for k in r)), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: _csv_cell(v) for k, v in record.items()})
    return buffer.getvalue()


def _csv_cell(value):
    """The csv module quotes what needs it (commas, quotes, newlines); a text a spreadsheet would
    run as a formula is shown as text; numbers are rounded to CSV_DECIMALS (no float32 noise),
    NaN and infinity show as n/a, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return spreadsheet_text(value)
    if isinstance(value, float) and math.isfinite(value):
        value = round(value, CSV_DECIMALS)
    return number(value, "") if isinstance(value, float) else value


def to_json(report: Report, with_published: bool = False) -> str:
    data = {"task": "report", "model": report.model, "retain_dataset": report.retain_dataset,
            "units": "fractions (accuracies, nonzero_fraction, kept_fraction, dtest_acc, mia_efficacy); "
                     "points (avg_gap_points)", "datasets": report.datasets,
            "settings": [s or HEADLINE_ID for s in report.settings],
            "setting_titles": {s or HEADLINE_ID: report.titles.get(s) or (HEADLINE_TITLE if s == HEADLINE else s)
                               for s in report.settings},
            "rows": [r.to_json() for r in report.rows],
            **({"trials": TRIALS_NOTE + " Each row's std holds its figures' standard deviations, in their units."}
               if report.has_trials else {}),
            "averages": [a.to_json() for s in report.settings for m in report.methods(s)
                         if _averaged(report) and (a := report.average(s, m)) is not None]}
    if with_published:
        same = (paper.classifier_same_setting if report.is_classifier else paper.same_setting)(report.model,
                                                                                               report.datasets)
        data["published"] = (paper.classifier_to_json() if report.is_classifier else paper.to_json()) | {
            "same_setting_as_rows": same}
    return json_text(data, _nonfinite_source(report))


def _nonfinite_source(report: Report) -> str:
    """The result file a NaN or infinite figure came from: what a JSON report that cannot hold it names."""
    for row in report.rows:
        values = (row.forget, row.retain, row.coef, row.nonzero, row.kept, *row.metrics.values())
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return ", ".join(row.sources) or "report"
    return "report"
