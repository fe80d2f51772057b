"""Hostile strings in every rendered output and hostile numbers in every numeric option.

Rendered strings: names from users and files (dataset labels, file and folder names, method names)
holding a newline, a ``|``, a backtick, ``<script>``, ``---``, ``$x^$`` or Rich markup are rendered
as themselves in every output language: the report's Markdown (checked by parsing it with
markdown-it, the CommonMark parser Rich ships with), CSV and JSON; the model card's YAML front
matter (yaml.safe_load and huggingface_hub's ModelCard) and Markdown body; matplotlib labels (SVG
text); Rich tables on the terminal. NaN and infinity are never shown as numbers.

Numeric options: every numeric option of every command, given a negative, zero, huge, non-integer,
NaN or infinite value where that is out of range, is refused in one line naming the option, with
nothing written (the ``assert_refused`` rows); library callers get the same check from the option
objects.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil

import pytest
import yaml
from clip_helpers import TINY
from hostile import assert_refused

pytestmark = pytest.mark.slow
BIG = str(10**30)
HOSTILE = "x`<script>alert(1)\n---\n$y$ | [red]z"  # one name with every class of trouble


# -- numeric options: every option, every bad kind ------------------------------------------------


def _split(*args):
    return lambda w: ["split", "-d", "digits", "-o", w.out / "split.json", *args]


def _finetune(*args):
    """A finetune whose other options are valid: only the option under test is wrong."""
    return lambda w: ["finetune", "-m", TINY, "-d", w.shapes, "-o", w.out / "sweep", "-b", "4", "-j", "0",
                      "--warmup-steps", "0", *args]


def _merge(*args):
    return lambda w: ["merge", w.a, w.b, "-o", w.out / "m.safetensors", *args]


def _vector(*args):
    return lambda w: ["vector", "--base", w.a, w.b, "-o", w.out / "v.safetensors", *args]


def _apply(*args):
    return lambda w: ["apply", "-b", w.base, "-v", w.tau, "-o", w.out / "t.safetensors", "-s", "-1", *args]


def _eval(*args):
    return lambda w: w.eval("-d", w.shapes, *args)


def _search(*args):
    return lambda w: w.search(*args)


def _classifier_eval(*args):
    return lambda w: ["eval", "-m", "resnet18-cifar", "-c", w.base, "-d", "digits", "--forget-split", w.earlier, *args]


# (command, the arguments before the option, option, bad values): each value one row. Every --seed
# is tried negative and just past its generator's range; every count and index huge; every float NaN.
NUMERIC = [
    ("split", _split("--forget-fraction", "0.1"), "--seed", ["-1", str(2**32), BIG]),
    ("split", _split(), "--forget-fraction", ["-0.1", "0", "1", "nan", "inf"]),
    ("split", _split(), "--forget-classes", ["-1", BIG]),
    ("finetune", _finetune("--steps", "1"), "--seed", ["-1", str(2**31), BIG]),
    ("finetune", _finetune("--steps", "1"), "--lr", ["-1", "0", "nan", "inf"]),
    ("finetune", _finetune("--steps", "1"), "--wd", ["-1", "nan", "inf"]),
    ("finetune", _finetune("--steps", "1"), "--label-smoothing", ["-0.1", "1", "nan"]),
    ("finetune", _finetune(), "--steps", ["-1", "0", BIG]),
    ("finetune", _finetune(), "--epochs", ["-1", "0", BIG]),
    ("finetune", _finetune("--steps", "1"), "--batch-size", ["-1", "0", BIG]),
    ("finetune", _finetune("--steps", "1"), "--accum-steps", ["-1", "0", BIG]),
    ("finetune", _finetune("--steps", "1"), "--warmup-steps", ["-1", BIG]),
    ("finetune", _finetune("--steps", "1"), "--workers", ["-1", BIG]),
    ("finetune", _finetune("--steps", "1"), "--point", ["-1", BIG]),
    ("finetune", _finetune("--steps", "1"), "--num-classes", ["-1", "1", BIG]),
    ("finetune", _finetune("--steps", "1", "--randaug", "rand-m1-n1"), "--crop-scale", ["-1", "0", "1e30", "nan"]),
    ("finetune", _finetune("--steps", "1", "--randaug", "rand-m1-n1"), "--hflip", ["-1", "1e30", "nan"]),
    ("eval", _eval(), "--batch-size", ["-1", "0", BIG]),
    ("eval", _eval(), "--workers", ["-1", BIG]),
    ("eval", _eval(), "--threshold", ["-1", "1e30", "nan"]),  # refused even where only a search reads it
    ("eval", _search(), "--threshold", ["0", "inf"]),
    ("eval", _search("--search", "fast"), "--refine", ["-1", BIG]),
    ("eval", _search(), "--base-retain", ["-1", "0", "1e30", "nan", "inf"]),
    ("eval", _classifier_eval(), "--num-classes", ["-1", "1", BIG]),
    ("merge", _merge("-m", "dare"), "--seed", ["-1", str(2**64), BIG]),
    ("merge", _merge("-m", "dare"), "--drop-rate", ["-1", "1", "nan"]),
    ("merge", _merge("-m", "ties"), "--density", ["-1", "0", "1e30", "nan"]),
    ("merge", _merge("-m", "sum", "-w", "1"), "--weight", ["nan", "inf", "-1e400"]),
    ("apply", _apply(), "--scale", ["nan", "inf", "-inf", "1e400"]),
]
# sizes are strings: what parse_size says names the text as given
SIZES = [
    ("merge", _merge(), "--max-memory", ["-1", "0", "1e30", "nan"]),
    ("merge", _merge(), "--shard-size", ["-1", "0", "1e30"]),
    ("vector", _vector(), "--max-memory", ["-1", "0", "1e30", "nan"]),
    ("apply", _apply(), "--shard-size", ["-1", "0", "1e30"]),
    ("eval", _eval(), "--cache-memory", ["-1", "0", "1e30", "nan"]),
    ("finetune", _finetune("--steps", "1"), "--cache-memory", ["-1", "0", "1e30"]),
]
# non-integers where an integer is meant: refused by Typer, or by the grid's parser (never truncated)
NOT_INTEGERS = [
    ("split", _split("--forget-fraction", "0.1"), "--seed"),
    ("split", _split(), "--forget-classes"),
    ("finetune", _finetune("--steps", "1"), "--seed"),
    ("finetune", _finetune(), "--steps"),
    ("finetune", _finetune(), "--epochs"),
    ("finetune", _finetune("--steps", "1"), "--batch-size"),
    ("finetune", _finetune("--steps", "1"), "--point"),
    ("eval", _eval(), "--workers"),
    ("eval", _search("--search", "fast"), "--refine"),
    ("merge", _merge("-m", "dare"), "--seed"),
]


def _shown(value: str) -> str:
    """How the error line shows a value: as Python prints the number it was parsed into."""
    try:
        return str(int(value))
    except ValueError:
        return str(float(value))


ROWS = {}
for command, build, flag, values in NUMERIC:
    for value in values:
        ROWS[f"8-{command}{flag}={value[:12]}"] = (
            lambda w, build=build, flag=flag, value=value: ([*build(w), flag, value], [f"{flag} ", _shown(value)]))
for command, build, flag, values in SIZES:
    for value in values:
        ROWS[f"8-{command}{flag}={value}"] = (
            lambda w, build=build, flag=flag, value=value: ([*build(w), flag, value], [f"{flag} {value!r}"]))
for command, build, flag in NOT_INTEGERS:
    ROWS[f"8-{command}{flag}=2.5"] = lambda w, build=build, flag=flag: ([*build(w), flag, "2.5"], [flag, "int"])


@pytest.mark.parametrize("row", sorted(ROWS))
def test_numeric_option_is_refused(row, ws, cli):
    assert_refused(ws, cli, ROWS[row])


@pytest.mark.parametrize("make, fragment", [
    (lambda: _finetune_options(batch_size=2.5), "batch_size 2.5: must be an integer"),
    (lambda: _finetune_options(workers=True), "workers True: must be an integer"),
    (lambda: _finetune_options(point=[0, -1]), "point -1: must be in [0, "),
    (lambda: _finetune_options(grid=_grid(seed=[1.5])), "seed 1.5: must be an integer"),
    (lambda: _finetune_options(grid=_grid(lr=[float("nan")])), "lr nan: must be a finite number > 0"),
    (lambda: _finetune_options(cache_memory="0"), "cache_memory '0': must be between 1 byte and 1 EiB"),
    (lambda: _eval_options(workers=-1), "workers -1: must be in [0, 1024]"),
    (lambda: _search_options(refine=1.5), "refine 1.5: must be an integer"),
    (lambda: _search_options(coefs=[0.0, float("inf")]), "coefs inf: must be a finite number"),
    (lambda: _unlearning_options(num_classes=10**30), "num_classes 1000000000000000000000000000000"),
    (lambda: _create_method("dare", seed=1.7), "seed 1.7: must be an integer"),
    (lambda: _create_method("dare", seed=2**64), "seed 18446744073709551616: must be in [0, 18446744073709551615]"),
    (lambda: _forget_split(fraction=0.1, seed=-1), "seed -1: must be in [0, 4294967295]"),
    (lambda: _forget_split(classes=[1.5]), "forget_classes 1.5: must be an integer"),
])
def test_library_callers_get_the_same_checks_by_keyword(make, fragment):
    from negmerge_cli.core.errors import UsageError

    with pytest.raises(UsageError) as raised:
        make()
    assert fragment in str(raised.value) and "--" not in str(raised.value)


def _finetune_options(**values):
    from negmerge_cli.stages import FinetuneOptions

    return FinetuneOptions(TINY, "digits", "never", **values)


def _grid(**values):
    from negmerge_cli.training.sweep import Grid

    return Grid(**values)


def _eval_options(**values):
    from negmerge_cli.stages import EvalOptions

    return EvalOptions(TINY, checkpoint="base.safetensors", **values)


def _search_options(**values):
    from negmerge_cli.stages import SearchOptions

    return SearchOptions("tau.safetensors", "digits", "digits", **values)


def _unlearning_options(**values):
    from negmerge_cli.stages import EvalOptions

    return EvalOptions("resnet8-cifar", checkpoint="original.safetensors", forget_split="split.json", **values)


def _create_method(name, **values):
    from negmerge_cli.arithmetic.methods import create_method

    return create_method(name, **values)


def _forget_split(**values):
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split

    return make_forget_split(open_classifier_data("digits"), **values)


# -- rendered strings: the report -------------------------------------------------------------------


def _evaluation(label: str, acc1: float) -> dict:
    """One entry of a real ``eval --json`` (the typed result's own JSON)."""
    from negmerge_cli.results import DatasetEvaluation, Metrics

    return DatasetEvaluation(label, TINY, None, Metrics(acc1, 1.0, acc1), 12, 3, 1, 1.0, 12.0).to_json()


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as CommonMark + GFM tables parse it: rows of cell texts."""
    from markdown_it import MarkdownIt

    tables, rows, cells = [], None, None
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    for token in tokens:
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            cells = []
        elif token.type == "inline" and cells is not None:
            cells.append("".join(child.content for child in token.children if child.type in ("text", "code_inline")))
        elif token.type == "tr_close":
            rows.append(cells)
            cells = None
        elif token.type == "table_close":
            tables.append(rows)
    return tables


def test_report_renders_a_hostile_dataset_label_literally_in_every_format(tmp_path, cli):
    from negmerge_cli.core.escape import one_line

    label = "evil\n| row | <b>x $x^$ `c` [l](u) *e* ~~s~~ \x1b[31m"  # the folder name of the eval's data
    results = tmp_path / "negmerge.json"
    results.write_text(json.dumps([_evaluation(f"/data/{label}", 0.25), _evaluation("imagenet", 0.5)]))

    markdown = cli("report", results)
    assert markdown.returncode == 0, markdown.stderr
    tables = _markdown_tables(markdown.stdout)
    assert tables and tables[0] == [["Method", f"{one_line(label)} Df", f"{one_line(label)} Dr"],
                                    ["NegMerge", "25.00", "50.00"]]
    assert all(line.startswith("|") for line in markdown.stdout.split("\n\n")[1].splitlines())  # one row per line
    assert "<b>" not in markdown.stdout and "\x1b" not in markdown.stdout

    for form in ("csv", "json"):  # files: click.echo would strip the escape sequence from stdout
        assert cli("report", results, "-o", tmp_path / f"report.{form}").returncode == 0
    with open(tmp_path / "report.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["dataset"] == label  # the csv module quotes it: read back exactly
    assert json.loads((tmp_path / "report.json").read_text())["datasets"] == [label]


def test_report_csv_shows_a_label_a_spreadsheet_would_run_as_text(tmp_path, cli):
    """A dataset folder named like a formula stays text in a spreadsheet (a leading apostrophe,
    which spreadsheets hide); numbers, negative ones included, are left as they are."""
    from negmerge_cli.report import render
    from negmerge_cli.report.rows import Report, ResultRow

    for label in ('=HYPERLINK("x","y")', "+1+cmd|' -C calc'!A0", "-2+3", "@SUM(A1)", "\tx"):
        results = tmp_path / "negmerge.json"
        results.write_text(json.dumps([_evaluation(f"/data/{label}", 0.25), _evaluation("imagenet", 0.5)]))
        assert cli("report", results, "-o", tmp_path / "report.csv", "-f").returncode == 0
        with open(tmp_path / "report.csv", newline="") as handle:
            assert next(csv.DictReader(handle))["dataset"] == "'" + label
    negative = Report([ResultRow("negmerge", "d", -0.25, 0.5, coef=-1.5)])
    rows = csv.DictReader(io.StringIO(render.render(negative, "csv")))
    assert [(row["forget_acc1"], row["lambda"]) for row in rows] == [("-0.25", "-1.5")]


def test_non_finite_figures_are_never_shown_as_numbers():
    """Result files cannot hold NaN (the strict JSON reader refuses it), but a report built in the
    library can: Markdown and CSV show n/a, JSON refuses in one line naming the source file."""
    from negmerge_cli.core.errors import OutputError
    from negmerge_cli.report import render
    from negmerge_cli.report.rows import Report, ResultRow

    nan, inf = float("nan"), float("inf")
    report = Report([ResultRow("negmerge", "digits", nan, 0.5, coef=inf, kept=nan, sources=("a.json",)),
                     ResultRow("mean", "digits", 0.25, -inf, metrics={"mia_efficacy": nan}, sources=("b.json",))])
    text = render.render(report, "markdown")
    assert not re.search(r"nan|inf", text, re.IGNORECASE), text
    assert "| NegMerge | n/a | 50.00 |" in text and "| Uniform Merge (mean) | 25.00 | n/a |" in text
    assert "| NegMerge | n/a (kept n/a%) |" in text
    rows = list(csv.DictReader(io.StringIO(render.render(report, "csv"))))
    assert not any(re.search(r"nan|inf", value, re.IGNORECASE) for row in rows for value in row.values() if value)
    negmerge = next(row for row in rows if (row["method"], row["dataset"]) == ("negmerge", "digits"))
    assert (negmerge["forget_acc1"], negmerge["retain_acc1"], negmerge["lambda"]) == ("n/a", "0.5", "n/a")
    with pytest.raises(OutputError, match=r"^a\.json: a result is NaN or infinite"):
        render.render(report, "json")


# -- rendered strings: the model card ---------------------------------------------------------------


def test_model_card_of_hostile_file_names_parses_and_shows_them_literally(ws, cli):
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    from negmerge_cli.core.escape import one_line

    base = ws.root / f"{HOSTILE} base.safetensors"
    vector = ws.root / f"{HOSTILE} tau.safetensors"
    shutil.copy(ws.base, base)
    shutil.copy(ws.tau, vector)
    folder = ws.root / f"out {HOSTILE}"
    result = cli("apply", "-b", base, "-v", vector, "-s", "-0.5", "-o", f"{folder}/", "-q")
    assert result.returncode == 0, result.stderr
    card = (folder / "README.md").read_text()

    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == f"{HOSTILE} base"  # YAML reads the name back exactly
    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.base_model == f"{HOSTILE} base" and "task-arithmetic" in loaded.data.tags

    body = card.split("---\n", 2)[2]
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<script" not in html and "&lt;script&gt;" in html  # shown, never raw HTML
    inputs = next(t for t in _markdown_tables(body) if t[0] == ["role", "input", "file", "SHA-256"])
    assert [(row[0], row[2]) for row in inputs[1:]] == [("base", one_line(base.name)), ("vector", one_line(vector.name))]
    assert all(len(row) == 4 for row in inputs)  # the | in the names split no cell
    headings = [line for line in body.splitlines() if line.startswith("# ")]
    assert len(headings) == 1 and "\n" not in headings[0]


def test_card_text_functions_keep_any_name_literal():
    from markdown_it import MarkdownIt

    from negmerge_cli.core.escape import markdown, markdown_code, one_line

    parser = MarkdownIt("commonmark").enable("table")
    for name in (HOSTILE, "`a``b`", " lead", "a\\", "&lt; entity", "<!-- c -->", "_x_ **y**", "#"):
        for render in (markdown, markdown_code):
            (table,) = _markdown_tables(f"| h |\n|---|\n| {render(name)} |\n")
            assert table[1] == [one_line(name)], (render.__name__, name, render(name))
            assert "<" not in parser.render(render(name)).replace("<p>", "").replace("</p>", "").replace(
                "<code>", "").replace("</code>", "")


# -- rendered strings: plots and terminal tables ---------------------------------------------------


def test_plot_labels_show_dollars_literally(ws, cli):
    """``$x^$`` is invalid mathtext: read as mathtext it fails the drawing; shown, it is SVG text."""
    shapes = ws.root / "$x^$ shapes"
    shutil.copytree(ws.shapes, shapes)
    search = ws.out / "$x^$ method.json"
    result = cli(*ws.eval("--vector", ws.tau, "--forget", shapes, "--retain", ws.shapes, "--coefs", "0,1",
                          "--json", search, "--plot", ws.out / "curve.svg", "-q"))
    assert result.returncode == 0, result.stderr
    assert "$x^$ shapes" in (ws.out / "curve.svg").read_text()  # the title names the forget set
    result = cli("report", search, "--plot", ws.out / "tradeoff.svg", "-o", ws.out / "report.md")
    assert result.returncode == 0, result.stderr
    svg = (ws.out / "tradeoff.svg").read_text()
    assert "$x^$ shapes: accuracy against λ" in svg and "$x^$ method" in svg


def test_rich_markup_in_names_is_shown_not_interpreted(ws, cli, monkeypatch):
    """A closing tag with nothing to close fails Rich's markup parser: read as markup, the table
    would be a traceback. Relative names keep the table narrow enough to show them whole."""
    monkeypatch.chdir(ws.root)
    shutil.copytree(ws.shapes, "[/]sh[bold]")
    result = cli(*ws.eval("-d", "[/]sh[bold]"))
    assert result.returncode == 0, result.stderr
    assert "[/]sh[bold]" in result.stderr  # the table's dataset cell
    shutil.copy(ws.a, "[/]w[red].safetensors")
    result = cli("inspect", "[/]w[red].safetensors")
    assert result.returncode == 0, result.stderr
    assert "[/]w[red].safetensors" in result.stdout


def test_json_outputs_never_hold_nan_tokens():
    from negmerge_cli.core.errors import OutputError
    from negmerge_cli.core.escape import json_text

    assert json.loads(json_text({"acc1": 0.5}, "x")) == {"acc1": 0.5}
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(OutputError, match="^out.json: a result is NaN or infinite"):
            json_text([{"acc1": bad}], "out.json")
