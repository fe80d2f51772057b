#!/usr/bin/env python3
"""Pick the best single task vector of a sweep, the paper's baseline "best single task arithmetic".

Each SEARCH_DIR holds the output of one `negmerge eval --vector VEC ... --json search.json` run (one
single fine-tune's vector). Every search chose its own lambda by the paper's rule (lowest Val forget
accuracy with Val retain accuracy >= 0.95 x the base's); the best single vector is the one whose chosen
point has the lowest Val forget accuracy (ties: higher retain accuracy, then the first in grid order).

Writes into --out-dir: choice.json (the choice and every candidate), search.json (a copy of the
chosen search), tau.safetensors (a symbolic link to the chosen vector) and, last, lambda.txt (the chosen
lambda as `negmerge eval` prints it), so that `negmerge apply --vector DIR/tau.safetensors
--scale -$(cat DIR/lambda.txt)` treats it like any merged vector. Standard library only.

    python3 best_single.py --out-dir runs/cars/best_single runs/cars/single/*/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def load_candidates(dirs: list[Path]) -> list[dict]:
    candidates = []
    for order, folder in enumerate(dirs):
        path = folder / "search.json"
        try:
            search = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"best_single.py: {path}: {exc}")
        if search.get("task") != "coefficient_search":
            raise SystemExit(f"best_single.py: {path}: not a `negmerge eval --vector` result")
        chosen = search.get("chosen")
        candidates.append({
            "name": folder.name,
            "order": order,
            "search": str(path),
            "vector": search["vector"],
            "lambda": None if chosen is None else chosen["coef"],
            "forget_acc1": None if chosen is None else chosen["forget_acc1"],
            "retain_acc1": None if chosen is None else chosen["retain_acc1"],
            "base": search.get("base"),
        })
    return candidates


def pick(candidates: list[dict]) -> dict:
    feasible = [c for c in candidates if c["lambda"] is not None]
    if not feasible:
        raise SystemExit("best_single.py: no single vector has a feasible lambda")
    return min(feasible, key=lambda c: (c["forget_acc1"], -c["retain_acc1"], c["order"]))


def _atomic_write(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o644)  # mkstemp's 0600 -> an ordinary file
    os.replace(temp, path)


def _atomic_symlink(target: str, link: Path) -> None:
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(link.parent))
    temp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    temp.unlink(missing_ok=True)
    os.symlink(relative, temp)
    os.replace(temp, link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, type=Path, help="where to write the choice")
    parser.add_argument("search_dirs", nargs="+", type=Path, help="one folder per single-vector search")
    args = parser.parse_args(argv)

    candidates = load_candidates(args.search_dirs)
    best = pick(candidates)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    choice = {
        "rule": "lowest Val forget acc1 at each vector's own chosen lambda; ties: higher retain acc1, then grid order",
        "chosen": {k: v for k, v in best.items() if k != "order"},
        "candidates": [{k: v for k, v in c.items() if k not in ("order", "base")} for c in candidates],
    }
    _atomic_write(out / "choice.json", json.dumps(choice, indent=2) + "\n")
    _atomic_write(out / "search.json", Path(best["search"]).read_text())
    _atomic_symlink(best["vector"], out / "tau.safetensors")
    _atomic_write(out / "lambda.txt", f"{best['lambda']:g}\n")
    print(f"best single: {best['name']} (lambda {best['lambda']:g}, Val forget {100 * best['forget_acc1']:.2f}%, "
          f"retain {100 * best['retain_acc1']:.2f}%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
