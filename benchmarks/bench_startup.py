#!/usr/bin/env python3
"""Start-up time of the command line: ``negmerge --help`` and ``--version``, best of N runs, against
the floor of starting Python and importing Typer (what any Typer CLI pays) in the same run.

    python3 benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def best_of(command: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    python = sys.executable
    rows = {
        "python -c 'import typer' (floor)": [python, "-c", "import typer"],
        "negmerge --help": [python, "-m", "negmerge_cli", "--help"],
        "negmerge --version": [python, "-m", "negmerge_cli", "--version"],
        "negmerge merge --help": [python, "-m", "negmerge_cli", "merge", "--help"],
        "python -c 'import torch' (what --help no longer pays)": [python, "-c", "import torch"],
    }
    floor = None
    for label, command in rows.items():
        seconds = best_of(command, runs)
        floor = floor or seconds
        print(f"{label:58s} {seconds:6.3f} s   {seconds / floor:5.2f}x the floor")


if __name__ == "__main__":
    main()
