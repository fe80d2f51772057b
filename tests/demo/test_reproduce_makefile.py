"""The paper-reproduction Makefile (docs/reproduce/Makefile) stays valid as the CLI changes.

`make -n` on the tiny model and one forget dataset prints every command the Makefile would run; each
`negmerge SUBCOMMAND ...` line is parsed by the real Typer/Click command (unknown options, bad values
and missing required options fail), the checkpoint names the Makefile predicts are those `finetune`
writes, and best_single.py and `negmerge report` work on the files the Makefile's rules write.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPRO = Path(__file__).resolve().parents[2] / "docs" / "reproduce"
MAKEFILE = REPRO / "Makefile"
MARK = "negmerge"  # NEGMERGE as the Makefile runs it
SUBCOMMANDS = {"finetune", "vector", "merge", "apply", "inspect", "eval", "report"}
TARGETS = ["all", "finetune", "vectors", "merges", "singles", "search", "apply", "test", "table",
           "print-points", "help", "finetune-mnist", "mnist"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(tmp_path: Path, *args: str, **variables: str) -> str:
    settings = {"MODEL": "negmerge-tiny", "PRETRAINED": "", "DATASETS": "mnist", "GRID_M": "1 2",
                "GRID_N": "1 3", "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out"),
                "NEGMERGE": MARK, "PYTHON": sys.executable, **variables}
    command = ["make", "--no-print-directory", "-f", str(MAKEFILE), *args,
               *(f"{k}={v}" for k, v in settings.items())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _commands(dry_run: str) -> list[list[str]]:
    """Every simple command of the printed recipes, as argument lists."""
    text = dry_run.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        # command substitutions and shell variables stand for a number at run time ($(cat lambda.txt))
        line = re.sub(r"\$\([^()]*\)", "0.5", line)
        line = re.sub(r"\$\{?\w+\}?", "0.5", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|<>"):
                if token in (">", ">>", "<", "2>"):
                    next(lexer, None)  # the redirection's file
                    continue
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def _negmerge_commands(dry_run: str) -> list[list[str]]:
    found = []
    for command in _commands(dry_run):
        if MARK in command:
            found.append(command[command.index(MARK) + 1:])
    return found


@pytest.fixture(scope="module")
def cli_commands():
    import typer

    from negmerge_cli.cli.app import app

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("mode", ["standard", "linear"])
def test_every_negmerge_command_parses_against_the_cli(tmp_path, cli_commands, mode):
    dry_run = _make(tmp_path, "-n", "all", MODE=mode)
    commands = _negmerge_commands(dry_run)
    linear = [c for c in commands if "--linearize" in c]
    finetunes = [c for c in commands if c[0] == "finetune"]
    assert all(c[c.index("--finetuning-mode") + 1] == mode for c in finetunes)
    if mode == "linear":  # searched and tested linearized; the whole encoder trains (no --freeze)
        assert {c[0] for c in linear} == {"eval"} and len(linear) == sum(c[0] == "eval" for c in commands) - 1
        assert not any("--freeze" in c for c in finetunes)
    else:
        assert not linear
    used = {c[0] for c in commands}
    assert used == SUBCOMMANDS, f"the Makefile runs {sorted(used)}"
    for argv in commands:
        name, args = argv[0], argv[1:]
        command = cli_commands[name]
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}
        for token in args:
            flag = token.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag):
                assert flag in known, f"`negmerge {name}` has no option {flag}: {' '.join(argv)}"
        try:  # the real parser: types, required options, arity
            command.make_context(name, list(args))
        except Exception as exc:  # Click's UsageError / BadParameter / NoSuchOption
            pytest.fail(f"`negmerge {' '.join(argv)}` does not parse: {exc}")


def test_the_pipeline_has_every_stage_per_dataset(tmp_path):
    dry_run = _make(tmp_path, "-n", "all", MODEL="ViT-B-32", PRETRAINED="openai")  # the paper's setting
    commands = _negmerge_commands(dry_run)
    by_name = lambda n: [c for c in commands if c[0] == n]
    assert len(by_name("finetune")) == 4  # GRID_M=1 2 x GRID_N=1 3
    assert sorted(c[c.index("--point") + 1] for c in by_name("finetune")) == ["0", "2", "3", "5"]
    assert all("paper" == c[c.index("--randaug") + 1] for c in by_name("finetune"))
    # trained as the release trains: visual attention frozen, each point its own seed (the default)
    assert all(c[c.index("--freeze") + 1] == "visual.transformer.resblocks.*.attn.*" for c in by_name("finetune"))
    assert not any("--seed-mode" in c for c in by_name("finetune"))
    methods = sorted(c[c.index("-m") + 1] for c in by_name("merge"))
    assert methods == ["magmax", "mean", "negmerge", "ties"]
    ties = next(c for c in by_name("merge") if "ties" in c)
    assert ties[ties.index("--density") + 1] == "0.2"
    searches = [c for c in by_name("eval") if "--vector" in c]
    assert len(searches) == 4 + 4  # 4 merged vectors + 4 single vectors
    assert all(c[c.index("--retain") + 1].startswith("imagenet:") for c in searches)
    assert all(c[c.index("--forget") + 1].endswith(":val") for c in searches)
    assert all(c[c.index("--base-retain") + 1] == "0.6666" for c in searches)  # ViT-B-32 + openai: the release's
    assert all("--precision" not in c for c in commands)  # float32, the release's, is the default
    applies = by_name("apply")
    assert len(applies) == 5  # best single + 4 merges
    assert all(c[c.index("--scale") + 1].startswith("-") for c in applies)
    tests = [c for c in by_name("eval") if "--vector" not in c]
    assert len(tests) == 6  # pretrained, best single, 4 merges
    assert "best_single.py" in dry_run
    reports = by_name("report")
    assert len(reports) == 2 and all(c[1:2] == [str(tmp_path / "out" / "mnist")] for c in reports)
    assert all("--published" in c for c in reports)  # the paper's model: its figures beside ours
    assert {c[c.index("-o") + 1] for c in reports} == {str(tmp_path / "out" / n) for n in ("table.md", "table.json")}
    assert any(c[c.index("--plot") + 1].endswith("tradeoff.png") for c in reports if "--plot" in c)


def test_the_stored_retain_base_is_only_for_the_papers_model(tmp_path):
    searches = [c for c in _negmerge_commands(_make(tmp_path, "-n", "search")) if c[0] == "eval"]  # tiny model
    assert searches and all("--base-retain" not in c for c in searches)
    reports = [c for c in _negmerge_commands(_make(tmp_path, "-n", "all")) if c[0] == "report"]
    assert reports and all("--published" not in c for c in reports)


def test_targets_exist_and_reruns_are_file_based(tmp_path):
    for target in TARGETS:
        _make(tmp_path, "-n", target)
    listing = _make(tmp_path, "-s", "print-points")
    rows = [line.split() for line in listing.splitlines()]
    assert [r[1] for r in rows] == ["0", "2", "3", "5"]
    # a finished checkpoint is not trained again
    done = Path(rows[0][2])
    done.parent.mkdir(parents=True)
    done.write_bytes(b"")
    dry_run = _make(tmp_path, "-n", "finetune")
    points = [c[c.index("--point") + 1] for c in _negmerge_commands(dry_run) if c[0] == "finetune"]
    assert points == ["2", "3", "5"]


def test_checkpoint_names_match_finetune(tmp_path):
    """The names the Makefile predicts are those `finetune --randaug paper` gives each --point."""
    from negmerge_cli.training.sweep import Grid, expand_grid, normalise_randaug

    listing = _make(tmp_path, "-s", "print-points", GRID_M="1 2 3 4 5 6 7 8 9 10", GRID_N="1 2 3",
                    DATASETS="mnist cars")
    rows = [line.split() for line in listing.splitlines()]
    assert len(rows) == 60
    for dataset, epochs in (("mnist", 30), ("cars", 70)):
        points = expand_grid(Grid(lr=[1e-5], wd=[0.1], epochs=[epochs], randaug=normalise_randaug(["paper"])))
        expected = [(str(p.index), f"{p.name}.safetensors") for p in points]
        got = [(r[1], Path(r[2]).name) for r in rows if r[0] == dataset]
        assert got == expected
    steps = _make(tmp_path, "-s", "print-points", STEPS="7", LR="3e-4").split()
    assert Path(steps[2]).name.startswith("lr0.0003_st7_")


def _search(path: Path, vector: str, coef: float, forget: float, retain: float) -> None:
    """search.json and lambda.txt as `negmerge eval --vector ... --json` writes them."""
    from negmerge_cli.results import SearchPoint, SearchResult, SearchRun

    base, chosen = SearchPoint(0.0, 0.9, 0.8), SearchPoint(coef, forget, retain)
    result = SearchResult(
        model="negmerge-tiny", checkpoint="base.safetensors", vector=vector, forget="mnist:/data:val",
        retain="imagenet:/data/imagenet:val", threshold=0.95, retain_limit=0.76, search="grid", coefs=[0.0, coef],
        base=base, n_forget_images=100, n_retain_images=100, runs={"grid": SearchRun(chosen, [base, chosen], 2, 1.0)},
        evaluations=2, heads_rebuilt=False, seconds=1.0, base_retain=0.8, base_retain_source="evaluated (lambda = 0)")
    path.mkdir(parents=True, exist_ok=True)
    (path / "search.json").write_text(json.dumps(result.to_json()))
    (path / "lambda.txt").write_text(f"{coef:g}\n")


def test_best_single_script_and_the_report(tmp_path, cli):
    out = tmp_path / "out"
    vectors = tmp_path / "vectors"
    vectors.mkdir()
    for name in ("a", "b", "c"):
        (vectors / f"{name}.safetensors").write_bytes(b"x")
    single = out / "mnist" / "single"
    _search(single / "a", str(vectors / "a.safetensors"), 0.5, 0.40, 0.78)
    _search(single / "b", str(vectors / "b.safetensors"), 0.9, 0.30, 0.77)
    _search(single / "c", str(vectors / "c.safetensors"), 0.7, 0.30, 0.79)  # tie on forget: higher retain
    best = out / "mnist" / "best_single"
    subprocess.run([sys.executable, str(REPRO / "best_single.py"), "--out-dir", str(best),
                    *(str(single / n) for n in "abc")], check=True, capture_output=True, timeout=30)
    assert (best / "lambda.txt").read_text().strip() == "0.7"
    assert (best / "tau.safetensors").resolve() == (vectors / "c.safetensors").resolve()
    assert json.loads((best / "choice.json").read_text())["chosen"]["name"] == "c"

    def test_json(method: str, forget: float, retain: float) -> None:
        from negmerge_cli.results import DatasetEvaluation, Metrics

        entry = lambda d, a: DatasetEvaluation(d, "negmerge-tiny", "x", Metrics(a, 1.0, a), 10, 10, 1, 1.0, 10.0).to_json()
        folder = out / "mnist" / method
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test.json").write_text(json.dumps([entry(f"mnist:{tmp_path}:test", forget),
                                                      entry(f"imagenet:{tmp_path}/imagenet:test", retain)]))

    test_json("pretrained", 0.9, 0.8)
    test_json("best_single", 0.3, 0.77)
    test_json("negmerge", 0.2, 0.76)
    _search(out / "mnist" / "negmerge", "tau", 0.85, 0.21, 0.77)
    (out / "mnist" / "negmerge" / "inspect.json").write_text(json.dumps({"tensors": [], "nonzero_fraction": 0.25}))
    # the Makefile's two report commands, as `make` would run them
    table, figures = out / "table.md", out / "table.json"
    assert cli("report", out / "mnist", "--published", "--format", "json", "-o", figures, "-f").returncode == 0
    done = cli("report", out / "mnist", "--published", "-o", table, "-f")
    assert done.returncode == 0, done.stderr
    text = table.read_text()
    # one dataset: no average column; a model other than ViT-B/32: the paper's figures apart, marked
    assert "| NegMerge | 20.00 | 76.00 |" in text and "| Pretrained | 90.00 | 80.00 |" in text
    assert "Another setting than the rows above" in text and "(20.76)" not in text
    assert "| Task Arithmetic (best single) | 0.70 |" in text  # its lambda, from best_single/search.json
    assert "| NegMerge | 0.85 |" in text  # kept needs the mean's vector (the elements the fine-tunes changed)
    assert "Df = forget set (lower is better), Dr = ImageNet." in text
    report = json.loads(figures.read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["best_single"]["lambda"] == 0.7 and rows["best_single"]["vector"] == "c"
    assert rows["negmerge"]["split"] == "test" and rows["negmerge"]["nonzero_fraction"] == 0.25
    assert rows["negmerge"]["kept_fraction"] is None and report["averages"] == []  # one dataset: no average
