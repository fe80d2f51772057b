"""The classifier reproduction Makefile (docs/reproduce/classifier/Makefile) stays valid: every
`negmerge` command of `make -n` is parsed by the real CLI, the pipeline has every stage, its default
run splits by SalUn's protocol and chooses lambda and the best single vector without the oracle (no
retrained model, no Dtest), every training run follows the protocol's recipe (SalUn's code), TRIALS=N
runs N training seeds on one split, and the whole pipeline runs for real on the shipped digits with
the tiny ResNet and a two-point grid (PROTOCOL=negmerge there: SalUn's split is for CIFAR and
Tiny-ImageNet only)."""

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


def _value(command: list[str], option: str):
    return command[command.index(option) + 1] if option in command else None


def test_the_pipeline_has_every_stage(tmp_path):
    commands = _dry_run(tmp_path, BASELINES="")
    by_name = lambda n: [c for c in commands if c[0] == n]
    finetunes = by_name("finetune")
    assert [_value(c, "--subset") for c in finetunes] == ["all", "retain"] + ["forget"] * 4  # 2 epochs x 2 smoothings
    assert sorted(c[c.index("--point") + 1] for c in finetunes if "--point" in c) == ["0", "1", "2", "3"]
    assert sorted(c[c.index("-m") + 1] for c in by_name("merge")) == ["magmax", "mean", "negmerge", "negmerge", "ties"]
    assert len(by_name("apply")) == 6  # 4 merges, NegMerge with BatchNorm statistics, best single
    assert len(_searches(commands)) == 6 + 1  # the same, and the loop over single vectors
    assert all(c[c.index("--scale") + 1].startswith("-") for c in by_name("apply"))
    assert len(by_name("split")) == 1


def test_both_batchnorm_rows(tmp_path):
    """NegMerge merged twice: from vectors without the BatchNorm running statistics (the default) and
    from vectors with them (--buffers include), each its own row of the report."""
    commands = _dry_run(tmp_path, BASELINES="")
    vectors = {_value(c, "--out-dir").rsplit("/", 1)[1]: _value(c, "--buffers") for c in commands if c[0] == "vector"}
    assert vectors == {"vectors": "exclude", "vectors_bn": "include"}
    merges = {c[c.index("-o") + 1].split("/")[-2]: c[-1] for c in commands if c[0] == "merge"}
    assert merges["negmerge_bn"].endswith("vectors_bn/*.safetensors") and merges["negmerge"].endswith("vectors/*.safetensors")
    report = next(c for c in commands if c[0] == "report")
    assert any(a.endswith("/negmerge_bn/eval.json") for a in report) and any(a.endswith("/negmerge/eval.json") for a in report)


def test_the_default_run_chooses_without_the_oracle(tmp_path):
    """`make -n` with no SELECT: every lambda search (merges, best single, the loop over single
    vectors) uses the honest rule and never gets the retrained model; the best single vector is
    picked from those searches by the same rule (best_single.py), not from an Avg. Gap."""
    text = _dry_run_text(tmp_path)
    split = [c for c in _negmerge_commands(text) if c[0] == "split"]
    assert len(split) == 1 and _value(split[0], "--protocol") == "salun" and _value(split[0], "--seed") == "2"
    searches = _searches(_negmerge_commands(text))
    assert len(searches) == 7
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
    assert len(searches) == 7
    for search in searches:
        assert search[search.index("--select") + 1] == "gap" and "--reference" in search
        assert search[search.index("--coefs") + 1] == "0:2:41"


# every row of the published table, as its code's README gives it for CIFAR-10 (docs/reproduce-classifier.md):
# (subset, objective, epochs, lr, its own setting)
PUBLISHED = {"finetune_retain": ("retain", "ce", "10", "0.01", None),
             "gradient_ascent": ("forget", "ascent", "5", "1e-4", None),
             "random_labels": (None, "random-labels", "10", "0.01", None),
             "l1_sparse": ("retain", "l1-sparse", "10", "0.01", ("--l1-alpha", "5e-4")),
             "salun": (None, "salun", "10", "0.013", ("--saliency-fraction", "0.5"))}


def test_baselines_are_the_published_ones_from_the_original(tmp_path):
    commands = _dry_run(tmp_path)
    baselines = {c[c.index("-o") + 1].split("/")[-2]: c for c in commands
                 if c[0] == "finetune" and "--point" not in c and "--pretrained" in c}
    assert list(baselines) == list(PUBLISHED)  # the default runs every row of the table
    for name, (subset, objective, epochs, lr, own) in PUBLISHED.items():
        command = baselines[name]
        assert (_value(command, "--subset"), _value(command, "--objective") or "ce") == (subset, objective), name
        assert (_value(command, "--epochs"), _value(command, "--lr")) == (epochs, lr), name
        assert own is None or _value(command, own[0]) == own[1], name
        assert _value(command, "--pretrained").endswith("original/model.safetensors") and "--forget-split" in command
    evaluated = [c[c.index("--checkpoint") + 1] for c in commands if c[0] == "eval" and "--json" in c]
    assert sum(path.endswith(tuple(f"{b}/unlearned.safetensors" for b in PUBLISHED)) for path in evaluated) == 5
    report = next(c for c in commands if c[0] == "report")
    assert sum(a.endswith("/eval.json") for a in report) == 2 + 5 + 1 + 5  # original, retrain, merges, best, baselines


def test_every_training_run_has_the_protocols_sgd(tmp_path):
    """arg_parser.py / main_train.py / unlearn/impl.py: batch 256, weight decay 5e-4, MultiStepLR x0.1 at
    the absolute epochs 91 and 136, the training seed; original and retrain 182 epochs at 0.1."""
    finetunes = [c for c in _dry_run(tmp_path) if c[0] == "finetune"]
    assert len(finetunes) == 2 + 4 + 5
    for command in finetunes:
        assert _value(command, "--batch-size") == "256" and _value(command, "--seed") == "1", command
        assert (_value(command, "--schedule"), _value(command, "--milestones")) == ("step", "91,136"), command
        assert _value(command, "--wd") == ("1e-4" if "--point" in command else "5e-4"), command  # the grid's own
    scratch = [c for c in finetunes if "--pretrained" not in c]
    assert [(_value(c, "--epochs"), _value(c, "--lr")) for c in scratch] == [("182", "0.1")] * 2


def test_trials_train_every_seed_on_one_split(tmp_path):
    """TRIALS=3: one split; each trial the whole run in OUT/trial-K with training seed K (TRAIN_SEED=1),
    on that split; one report over every trial's rows."""
    out = str(tmp_path / "out")
    commands = _dry_run(tmp_path, TRIALS="3", BASELINES="salun")
    assert [c for c in commands if c[0] == "split"] == [next(c for c in commands if c[0] == "split")]
    split = _value(next(c for c in commands if c[0] == "split"), "-o")
    assert split == f"{out}/forget.json"
    finetunes = [c for c in commands if c[0] == "finetune"]
    assert len(finetunes) == 3 * (2 + 4 + 1) and all(_value(c, "--forget-split") == split for c in finetunes)
    for trial in ("1", "2", "3"):
        mine = [c for c in finetunes if _value(c, "-o").startswith(f"{out}/trial-{trial}/")]
        assert len(mine) == 7 and {_value(c, "--seed") for c in mine} == {trial}
    assert all(_value(c, "--select") == "retain-bar" and "--reference" not in c for c in _searches(commands))
    reports = [c for c in commands if c[0] == "report"]
    assert len(reports) == 1 and _value(reports[0], "-o") == f"{out}/report.md"
    listed = [a for a in reports[0] if a.endswith("/eval.json")]
    assert len(listed) == 3 * (2 + 5 + 1 + 1) and {a.split("/")[-3] for a in listed} == {"trial-1", "trial-2", "trial-3"}


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
                "METHODS": "negmerge mean", "BASELINES": "gradient_ascent", "NMFLAGS": "-q",  # -j2: this machine's two cores
                "PROTOCOL": "negmerge",  # SalUn's split refuses digits
                "BN_METHODS": ""}  # the BatchNorm rows' commands: test_both_batchnorm_rows (50 s more here)
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
                                         "| SalUn\u2021 |",
                                         "unlearning with Df only"))

    # the reproduction folder itself reads as the same rows as the Makefile's list of eval files
    from negmerge_cli.stages import make_report

    by_folder, listed = make_report([out])[0], make_report(sorted(out.glob("*/eval.json")))[0]
    assert sorted(r.method for r in by_folder.rows) == sorted(r.method for r in listed.rows) == sorted(
        ["original", "retrain", "negmerge", "mean", "best_single", "gradient_ascent"])

    rerun = subprocess.run([*command, "-n"], capture_output=True, text=True, cwd=tmp_path, env=environment,
                           timeout=120)
    assert [c[0] for c in _negmerge_commands(rerun.stdout.replace(settings["NEGMERGE"], MARK))] == ["report"]
