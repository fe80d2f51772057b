#!/usr/bin/env python3
"""Build the paper's table from the Makefile's outputs: forget (Df) and ImageNet (Dr) test accuracy
per forget dataset and method, and their averages. Standard library only.

Reads, for each DATASET and METHOD, under --out:
  DATASET/METHOD/test.json     `negmerge eval -d FORGET:test -d imagenet:ROOT:test --json` (a list of
                               CLIP_benchmark-shaped results: dataset, metrics.acc1, ...)
  DATASET/METHOD/search.json   `negmerge eval --vector ... --json` (chosen coef, Val accuracies), if any
  DATASET/METHOD/inspect.json  `negmerge inspect --json` of the merged vector (nonzero_fraction), if any

Prints a Markdown table on stdout; --json FILE also writes every figure as JSON.

    python3 table.py --out runs/paper --datasets "cars dtd" --methods "pretrained best_single mean ties magmax negmerge"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

DATASET_TITLES = {"cars": "Cars", "dtd": "DTD", "eurosat": "EuroSAT", "gtsrb": "GTSRB", "mnist": "MNIST",
                  "resisc45": "RESISC45", "sun397": "SUN397", "svhn": "SVHN", "imagenet": "ImageNet"}
METHOD_TITLES = {"pretrained": "Pretrained", "best_single": "Task Arithmetic (best single)",
                 "mean": "Uniform Merge (mean)", "sum": "Task Arithmetic (sum)", "ties": "TIES-Merging",
                 "dare": "DARE", "magmax": "MagMax", "negmerge": "NegMerge"}
# ViT-B/32, averages over the 8 forget sets, test accuracy in % (the paper; docs/reproduce.md)
PUBLISHED_VIT_B_32 = {"pretrained": (48.13, 63.33), "best_single": (23.63, 60.60), "mean": (22.50, 60.55),
                      "ties": (26.21, 61.08), "magmax": (25.24, 60.95), "negmerge": (20.76, 60.36)}
RETAIN_KIND = "imagenet"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"table.py: {path}: {exc}")


def _kind(label: str) -> str:
    """'cars:/data:test' -> 'cars'; a folder spec gives its path."""
    return label.split(":", 1)[0].lower()


def test_accuracies(results, dataset: str, path: Path) -> tuple[Optional[float], Optional[float]]:
    """(forget acc1, retain acc1) from an eval result list; the forget entry is the one named after the
    dataset (else the first non-ImageNet entry), the retain entry the ImageNet one."""
    if not isinstance(results, list):
        raise SystemExit(f"table.py: {path}: expected the list `negmerge eval --data ... --json` writes")
    forget = retain = None
    for entry in results:
        acc = entry["metrics"]["acc1"]
        kind = _kind(entry["dataset"])
        if kind == RETAIN_KIND and dataset != RETAIN_KIND:
            retain = acc
        elif kind == dataset or (forget is None and kind != RETAIN_KIND):
            forget = acc
    return forget, retain


def collect(out: Path, datasets: list[str], methods: list[str]) -> dict:
    rows = {}
    for method in methods:
        cells = {}
        for dataset in datasets:
            folder = out / dataset / method
            results = _read_json(folder / "test.json")
            if results is None:
                continue
            forget, retain = test_accuracies(results, dataset, folder / "test.json")
            cell = {"forget": forget, "retain": retain}
            search = _read_json(folder / "search.json")
            if search and search.get("chosen"):
                cell.update({"lambda": search["chosen"]["coef"], "val_forget": search["chosen"]["forget_acc1"],
                             "val_retain": search["chosen"]["retain_acc1"]})
                cell["base_val"] = search.get("base")
            choice = _read_json(folder / "choice.json")
            if choice:
                cell["vector"] = choice["chosen"]["name"]
            inspected = _read_json(folder / "inspect.json")
            if inspected and inspected.get("nonzero_fraction") is not None:
                cell["kept"] = inspected["nonzero_fraction"]
            cells[dataset] = cell
        complete = [c for c in cells.values() if c["forget"] is not None and c["retain"] is not None]
        average = None
        if complete:
            average = {"forget": sum(c["forget"] for c in complete) / len(complete),
                       "retain": sum(c["retain"] for c in complete) / len(complete),
                       "n_datasets": len(complete), "complete": len(complete) == len(datasets)}
        rows[method] = {"datasets": cells, "average": average}
    return rows


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(rows: dict, datasets: list[str], methods: list[str], model: Optional[str]) -> str:
    titles = [DATASET_TITLES.get(d, d) for d in datasets]
    lines = [f"Test accuracy (%) after unlearning{f' ({model})' if model else ''}: Df = forget set "
             "(lower is better), Dr = ImageNet (retain).", ""]
    header = ["Method"] + [f"{t} {x}" for t in titles for x in ("Df", "Dr")] + ["Avg Df", "Avg Dr"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for method in methods:
        row = rows[method]
        cells = [METHOD_TITLES.get(method, method)]
        for dataset in datasets:
            cell = row["datasets"].get(dataset, {})
            cells += [_pct(cell.get("forget")), _pct(cell.get("retain"))]
        average = row["average"]
        mark = "" if average is None or average["complete"] else "*"
        cells += [_pct(average and average["forget"]) + mark, _pct(average and average["retain"]) + mark]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["average"] and not r["average"]["complete"] for r in rows.values()):
        lines += ["", "\\* average over the datasets finished so far."]

    negated = [m for m in methods if any("lambda" in c for c in rows[m]["datasets"].values())]
    if negated:
        lines += ["", "Chosen lambda (on Val), and for merged vectors the fraction of elements kept (non-zero):", ""]
        lines.append("| Method | " + " | ".join(titles) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(titles)) + "|")
        for method in negated:
            cells = [METHOD_TITLES.get(method, method)]
            for dataset in datasets:
                cell = rows[method]["datasets"].get(dataset, {})
                text = "-" if "lambda" not in cell else f"{cell['lambda']:.2f}"
                if "kept" in cell:
                    text += f" ({100 * cell['kept']:.1f}% kept)"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")

    published = [m for m in methods if m in PUBLISHED_VIT_B_32]
    if published:
        lines += ["", "Published averages (ViT-B/32, 8 forget sets, Df / Dr): "
                  + "; ".join(f"{METHOD_TITLES[m]} {PUBLISHED_VIT_B_32[m][0]:.2f} / {PUBLISHED_VIT_B_32[m][1]:.2f}"
                              for m in published) + "."]
    return "\n".join(lines) + "\n"


def _model_of(out: Path, datasets: list[str]) -> Optional[str]:
    for dataset in datasets:
        for method in ("pretrained", "negmerge"):
            results = _read_json(out / dataset / method / "test.json")
            if isinstance(results, list) and results:
                return results[0].get("model")
    return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o644)  # mkstemp's 0600 -> an ordinary file
    os.replace(temp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the Makefile's OUT folder")
    parser.add_argument("--datasets", required=True, help="forget datasets, space- or comma-separated")
    parser.add_argument("--methods", default="pretrained best_single mean ties magmax negmerge",
                        help="rows, space- or comma-separated")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    datasets = args.datasets.replace(",", " ").split()
    methods = args.methods.replace(",", " ").split()

    rows = collect(args.out, datasets, methods)
    model = _model_of(args.out, datasets)
    if args.json:
        _atomic_write(args.json, json.dumps({"model": model, "datasets": datasets, "methods": methods,
                                             "rows": rows, "units": "fractions (test acc1)",
                                             "published_vit_b_32_averages_percent": PUBLISHED_VIT_B_32},
                                            indent=2) + "\n")
    sys.stdout.write(markdown(rows, datasets, methods, model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
