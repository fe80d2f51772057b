#!/usr/bin/env python3
"""Pick the best single task vector of the classifier reproduction by the merges' own lambda rule.

Each SEARCH.json is one single vector's `negmerge eval --vector VEC ... --json SEARCH.json` (task
classifier_coefficient_search), named after the vector. The rule is the one every search used (the
same as the merges'; negmerge_cli.classifier.search.best_single):

- retain-bar (the default, honest): the vector whose chosen lambda gives the lowest Df accuracy
  (every chosen point already keeps Dr, or the hold-out val, at the bar); ties to the higher
  retained accuracy, then the first file. It reads only Dr (or val) and Df.
- gap (the ORACLE: it reads the retrained model and Dtest): the smallest Avg. Gap at the chosen lambda.

Prints the winner's name (the file's stem) alone on stdout; with --choice FILE, also writes the choice
and every candidate there (the report reads its `chosen.name`). Standard library only.

    python3 best_single.py --choice OUT/best_single/choice.json OUT/singles/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    candidates = []
    for order, path in enumerate(paths):
        try:
            search = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"best_single.py: {path}: {exc}")
        if not isinstance(search, dict) or search.get("task") != "classifier_coefficient_search":
            raise SystemExit(f"best_single.py: {path}: not a classifier `negmerge eval --vector --json` result")
        chosen = search.get("chosen")
        candidates.append({"name": path.stem, "order": order, "search": str(path), "select": search["select"],
                           "oracle": search.get("oracle", search["select"] == "gap"), "chosen": chosen})
    return candidates


def key(candidate: dict):
    chosen = candidate["chosen"]
    if candidate["oracle"]:
        return (chosen["avg_gap_points"], candidate["order"])
    retained = chosen["val_acc"] if chosen.get("val_acc") is not None else chosen["dr_acc"]
    return (chosen["df_acc"], -retained, candidate["order"])


def pick(candidates: list[dict]) -> dict:
    rules = sorted({c["select"] for c in candidates})
    if len(rules) != 1:
        raise SystemExit(f"best_single.py: the single vectors were searched by different rules ({', '.join(rules)})")
    feasible = [c for c in candidates if c["chosen"] is not None]
    if not feasible:
        raise SystemExit("best_single.py: no single vector has a lambda that keeps the retained accuracy at the bar")
    return min(feasible, key=key)


def _write(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", nargs="+", type=Path)
    parser.add_argument("--choice", type=Path, help="also write the choice and every candidate here")
    args = parser.parse_args(argv)
    candidates = load(args.searches)
    best = pick(candidates)
    if args.choice:
        rule = best["select"] + (" (oracle)" if best["oracle"] else "")
        choice = {"rule": rule, "oracle": best["oracle"],
                  "chosen": {"name": best["name"], "lambda": best["chosen"]["coef"], "search": best["search"]},
                  "candidates": [{"name": c["name"], "search": c["search"],
                                  "lambda": c["chosen"]["coef"] if c["chosen"] else None} for c in candidates]}
        _write(args.choice, json.dumps(choice, indent=2) + "\n")
    print(best["name"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
