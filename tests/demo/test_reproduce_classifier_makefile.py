"""The classifier reproduction Makefile (docs/reproduce/classifier/Makefile) stays valid: every
`negmerge` command of `make -n` is parsed by the real CLI, the pipeline has every stage, its default
run chooses lambda and the best single vector without the oracle (no retrained model, no Dtest), and
the whole pipeline runs for real on the shipped digits with the tiny ResNet and a two-point grid."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo.test_reproduce_makefile import MARK, _negmerge_commands

MAKEFILE = Path(__file__).resolve().parents[2] / "docs" / "reproduce" / "classifier" / "Makefile"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run_text(tmp_path: Path, **variables: str) -> str:
    settings = {"OUT": str(tmp_path / "out"), "NEGMERGE": MARK, "FT_EPOCHS": "40 50", "FT_WD": "1e-4",
                "FT_LS": "0 0.1", **variables}
    done = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(MAKEFILE), "all",
                           *(f"{k}={v}" for k, v in settings.items())], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _dry_run(tmp_path: Path, **variables: str) -> list[list[str]]:
    return _negmerge_commands(_dry_run_text(tmp_path, **variables))


def _searches(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[0] == "eval" and "--vector" in c]


def test_every_negmerge_command_parses_against_the_cli(tmp_path):
    import typer

    from negmerge_cli.cli.app import app

    commands = typer.main.get_command(app).commands
    for argv in _dry_run(tmp_path):
        name, args = argv[0], argv[1:]
        known = {o for p in commands[name].params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        for token in args:
            flag = token.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag):
                assert flag in known, f"`negmerge {name}` has no option {flag}: {' '.join(argv)}"
        commands[name].make_context(name, list(args))


def test_the_pipeline_has_every_stage(tmp_path):
    commands = _dry_run(tmp_path)
    by_name = lambda n: [c for c in commands if c[0] == n]
    finetunes = by_name("finetune")
    subsets = [c[c.index("--subset") + 1] for c in finetunes]
    assert subsets == ["all", "retain"] + ["forget"] * 4  # 2 epochs x 1 wd x 2 label smoothings
    assert sorted(c[c.index("--point") + 1] for c in finetunes if "--point" in c) == ["0", "1", "2", "3"]
    assert sorted(c[c.index("-m") + 1] for c in by_name("merge")) == ["magmax", "mean", "negmerge", "ties"]
    assert len(by_name("apply")) == 5  # 4 merges + best single (single vectors are chosen from their searches)
    assert len(_searches(commands)) == 5 + 1  # 4 merges + best single, and the loop over single vectors
    assert all(c[c.index("--scale") + 1].startswith("-") for c in by_name("apply"))
    assert len(by_name("split")) == 1 and len(by_name("vector")) == 1


def test_the_default_run_chooses_without_the_oracle(tmp_path):
    """`make -n` with no SELECT: every lambda search (merges, best single, the loop over single
    vectors) uses the honest rule and never gets the retrained model; the best single vector is
    picked from those searches by the same rule (best_single.py), not from an Avg. Gap."""
    text = _dry_run_text(tmp_path)
    searches = _searches(_negmerge_commands(text))
    assert len(searches) == 6
    for search in searches:
        assert search[search.index("--select") + 1] == "retain-bar", search
        assert "--reference" not in search and "gap" not in search, search
        assert "--json" in search
    assert "best_single.py" in text and "avg_gap_points" not in text and "oracle" not in text.lower()
    evaluations = [c for c in _negmerge_commands(text) if c[0] == "eval" and "--vector" not in c]
    # the reported evaluations still measure the Avg. Gap to the retrained model (after lambda is chosen)
    reported = [c for c in evaluations if not c[c.index("--checkpoint") + 1].endswith("retrain/model.safetensors")]
    assert reported and all("--reference" in c for c in reported)


def test_the_oracle_is_an_explicit_choice(tmp_path):
    searches = _searches(_dry_run(tmp_path, SELECT="gap", COEFS="0:2:41"))
    assert len(searches) == 6
    for search in searches:
        assert search[search.index("--select") + 1] == "gap" and "--reference" in search
        assert search[search.index("--coefs") + 1] == "0:2:41"


def test_baselines_are_finetunes_of_the_original(tmp_path):
    commands = _dry_run(tmp_path, BASELINES="finetune_retain gradient_ascent random_labels")
    baselines = [c for c in commands if c[0] == "finetune" and "--point" not in c and "--pretrained" in c]
    assert [(c[c.index("--subset") + 1], c[c.index("--objective") + 1] if "--objective" in c else "ce")
            for c in baselines] == [("retain", "ce"), ("forget", "ascent"), ("forget", "random-labels")]
    evaluated = [c[c.index("--checkpoint") + 1] for c in commands if c[0] == "eval" and "--json" in c]
    assert sum(path.endswith(("finetune_retain/unlearned.safetensors", "gradient_ascent/unlearned.safetensors",
                              "random_labels/unlearned.safetensors")) for path in evaluated) == 3
    report = next(c for c in commands if c[0] == "report")
    assert sum(a.endswith("/eval.json") for a in report) == 2 + 4 + 1 + 3  # original, retrain, merges, best, baselines


def test_grid_size_matches_finetune_points(tmp_path):
    """The Makefile's point count is the size of the grid `finetune` expands."""
    from negmerge_cli.training.sweep import Grid, expand_grid

    commands = _dry_run(tmp_path, FT_EPOCHS="40 50 60", FT_WD="1e-4 5e-5 1e-5", FT_LS="0 0.05 0.1")
    points = [c for c in commands if c[0] == "finetune" and "--point" in c]
    grid = expand_grid(Grid(lr=[0.01], epochs=[40, 50, 60], wd=[1e-4, 5e-5, 1e-5], label_smoothing=[0, 0.05, 0.1]))
    assert len(points) == len(grid) == 27


@pytest.mark.slow
def test_the_makefile_runs_end_to_end_on_digits(tmp_path):
    """Every target for real (a tiny run: 1-epoch original and retrain, two fine-tunes, two merge
    methods, one baseline; OUT relative, as the Makefile's default): no search reads the retrained
    model, the best single vector is picked by the merges' rule, a rerun redoes only the report, and
    the report has a row per model."""
    out = tmp_path / "out"
    settings = {"OUT": "out", "NEGMERGE": f"{sys.executable} -m negmerge_cli", "MODEL": "resnet8-cifar",
                "DATA": "digits", "SCRATCH_EPOCHS": "1", "FT_EPOCHS": "1 2", "FT_WD": "1e-4", "FT_LS": "0",
                "METHODS": "negmerge mean", "BASELINES": "gradient_ascent", "NMFLAGS": "-q"}  # -j2: this machine's two cores
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(MAKEFILE.parents[3]), os.environ.get("PYTHONPATH", "")])}
    command = ["make", "-j2", "--no-print-directory", "-f", str(MAKEFILE), "all", *(f"{k}={v}" for k, v in settings.items())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # no oracle anywhere in the default run: every search chose by retain-bar without the retrained model
    singles = {p.stem: json.loads(p.read_text()) for p in sorted((out / "singles").glob("*.json"))}
    assert len(singles) == 2
    for search in [*singles.values(), *(json.loads((out / m / "lambda.json").read_text()) for m in
                                        ("negmerge", "mean", "best_single"))]:
        assert search["select"] == "retain-bar" and search["oracle"] is False and search["reference"] is None
        assert search["reads"] == ["dr_acc", "df_acc"] and search["chosen"] is not None
    # best single by the merges' rule: the lowest Df accuracy at its chosen lambda (ties: higher Dr, then the first)
    order = list(singles)
    winner = min(order, key=lambda n: (singles[n]["chosen"]["df_acc"], -singles[n]["chosen"]["dr_acc"], order.index(n)))
    best = out / "vectors" / f"{winner}.safetensors"
    assert (out / "best_single" / "tau.safetensors").read_bytes() == best.read_bytes()
    assert json.loads((out / "best_single" / "choice.json").read_text())["chosen"]["name"] == winner
    for row in ("original", "negmerge", "mean", "best_single", "gradient_ascent"):
        assert json.loads((out / row / "eval.json").read_text())["avg_gap_points"] is not None
    report = (out / "report.md").read_text()
    assert all(name in report for name in ("NegMerge", "Uniform Merge", "best single", "Retrain", "Gradient ascent", "Avg. Gap",
                                         "| SalUn |"))

    # the reproduction folder itself reads as the same rows as the Makefile's list of eval files
    from negmerge_cli.stages import make_report

    by_folder, listed = make_report([out])[0], make_report(sorted(out.glob("*/eval.json")))[0]
    assert sorted(r.method for r in by_folder.rows) == sorted(r.method for r in listed.rows) == sorted(
        ["original", "retrain", "negmerge", "mean", "best_single", "gradient_ascent"])

    rerun = subprocess.run([*command, "-n"], capture_output=True, text=True, cwd=tmp_path, env=environment,
                           timeout=120)
    assert [c[0] for c in _negmerge_commands(rerun.stdout.replace(settings["NEGMERGE"], MARK))] == ["report"]
