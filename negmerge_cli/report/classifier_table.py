"""The classifier literature's published table (report/published.py) as Markdown and as CSV/JSON
records: grouped by the data each method trains on (NegMerge's fine-tunes see only Df, so the
Df-only group is its fair comparison), each row with its source and a mark for figures that are
transcribed but not rechecked, or from secondary sources."""

from __future__ import annotations

from negmerge_cli.core.escape import number
from negmerge_cli.report import published as paper

COLUMNS = ["Method", "Dr %", "Df %", "Dtest %", "MIA-efficacy %", "Avg. Gap", "source"]


def markdown(mismatch: str) -> str:
    """The table under our rows; ``mismatch`` says when our rows are of another setting."""
    lines = [f"Published ({paper.CLASSIFIER_SETTING}): accuracies and MIA-efficacy in %, Avg. Gap in points "
             f"to Retrain (SalUn's UA is 100 - Df).{mismatch}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 2) + "---|"]
    sources = list(dict.fromkeys(p.source for p in paper.CLASSIFIER.values()))
    for data, title in paper.DATA_GROUPS.items():
        lines.append(f"| *{title}* |" + " |" * (len(COLUMNS) - 1))
        for _, known in paper.classifier_rows(data):
            figures = [known.dr, known.df, known.dtest, known.mia, known.avg_gap]
            cells = [number(v) for v in figures] if any(v is not None for v in figures) else ["-"] * 4 + [known.status]
            lines.append("| " + " | ".join([known.title + paper.MARKS[known.status], *cells,
                                            f"[{sources.index(known.source) + 1}]"]) + " |")
    notes = [f"[{i + 1}] {source}." for i, source in enumerate(sources)]
    notes += [f"{paper.MARKS[paper.TRANSCRIBED]} transcribed from the paper's table by a student reproduction "
              "(each Avg. Gap agrees with its four figures), not rechecked against the paper.",
              f"{paper.MARKS[paper.SECONDARY]} {paper.STATUS_MEANINGS[paper.SECONDARY]}.",
              f"{paper.NOT_TRANSCRIBED}: {paper.STATUS_MEANINGS[paper.NOT_TRANSCRIBED]}."]
    return "\n".join(lines + [""] + notes) + "\n"


def records(blank: dict, keys: list[str]) -> list[dict]:
    """One CSV/JSON record per published row: percent and points as fractions (and points)."""
    found = []
    for method, known in paper.CLASSIFIER.items():
        metrics = {"dtest_acc": paper.fraction(known.dtest), "mia_efficacy": paper.fraction(known.mia),
                   "avg_gap_points": known.avg_gap}
        found.append(blank | {"method": method, "dataset": paper.CLASSIFIER_DATASET,
                              "forget_acc1": paper.fraction(known.df), "retain_acc1": paper.fraction(known.dr), **{k: metrics.get(k) for k in keys},
                              "published_status": known.status, "published_source": known.source,
                              "trains_on": paper.DATA_GROUPS[known.data]})
    return found
