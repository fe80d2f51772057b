"""The docs cannot go stale: what they quote is checked against the real CLI and the recorded runs.

- docs/demo.md's options table lists exactly the options of `negmerge demo --help`;
- every `negmerge ...` command quoted in a code block of the docs parses against the real command
  (unknown options, bad values, missing required options fail), as the Makefile test does;
- every `<!-- generated:NAME -->` region is what docs/make_figures.py renders from the recorded
  run (docs/generated/demo-runs.json), so no demo runs here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# the docs whose commands are checked (the others are checked by their owners' tests, or not yet)
CHECKED = ["demo.md", "eval.md", "classifier.md", "inspect.md"]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`((?:negmerge|python -m negmerge_cli) [^`\n]+)`")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # NAME, FILE, N in a synopsis: any value
_STOP = {"|", "||", ")", ";", "&&", ">", "2>", "<"}


@pytest.fixture(scope="module")
def commands():
    import typer

    from negmerge_cli.cli.app import app

    return typer.main.get_command(app).commands


@pytest.fixture(scope="module")
def make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quoted_commands(text: str, spans: bool = False) -> list[list[str]]:
    """`negmerge SUB ...` (or `python -m negmerge_cli SUB ...`) starting a line or a shell segment
    in the code blocks of ``text`` (with ``spans``: its inline code spans instead, fragments whose
    options are checked but not their completeness), continuation lines joined, up to a pipe or the
    end of a `$( ... )`; shell variables stand for `1`, and so do placeholders (NAME, N). Synopses
    with `[...]`, `{...}` or `...` are not commands and are left out."""
    found = []
    pieces = _INLINE.findall(_FENCE.sub("", text)) if spans else _FENCE.findall(text)
    for piece in pieces:
        for line in piece.replace("\\\n", " ").splitlines():
            line = _VARIABLE.sub("1", line.replace("$(", " "))
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            found += _commands_in(tokens)
    return found


def _commands_in(tokens: list[str]) -> list[list[str]]:
    found, segment_start = [], 0
    for index, token in enumerate(tokens):
        if token in _STOP:
            segment_start = index + 1
            continue
        lead = tokens[segment_start:index]
        starts = token == "negmerge" and all("=" in t for t in lead)
        starts |= token == "negmerge_cli" and index > 0 and tokens[index - 1] == "-m"
        if not starts:
            continue
        argv = []
        for word in tokens[index + 1:]:
            if word in _STOP:
                break
            argv.append("1" if _PLACEHOLDER.fullmatch(word) else word.rstrip(")"))
            if word.endswith(")"):
                break
        if argv and not any(mark in " ".join(argv) for mark in ("[", "{", "...")):
            found.append(argv)
    return found


def test_the_extractor_finds_commands():
    text = "```\nLAMBDA=$(negmerge eval -m NAME -c b.safetensors \\\n  --forget x --retain y)\n" \
           "negmerge apply --scale -$LAMBDA -o u.safetensors  # note\nnegmerge inspect v --json | less\n" \
           "negmerge demo [--quick]\n```\n"
    assert quoted_commands(text) == [["eval", "-m", "1", "-c", "b.safetensors", "--forget", "x", "--retain", "y"],
                                     ["apply", "--scale", "-1", "-o", "u.safetensors"], ["inspect", "v", "--json"]]


def _check_options(doc: str, argv: list[str], commands) -> None:
    name, args = argv[0], argv[1:]
    assert name in commands, f"{doc}: `negmerge {name}` is no command: {' '.join(argv)}"
    command = commands[name]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}
    for token in args:
        flag = token.split("=", 1)[0]
        if re.fullmatch(r"--?[A-Za-z][\w-]*", flag):
            assert flag in known, f"{doc}: `negmerge {name}` has no option {flag}: {' '.join(argv)}"


@pytest.mark.parametrize("doc", CHECKED)
def test_every_quoted_command_parses_against_the_cli(doc, commands):
    for argv in quoted_commands((DOCS / doc).read_text(), spans=True):
        _check_options(doc, argv, commands)
    for argv in quoted_commands((DOCS / doc).read_text()):
        _check_options(doc, argv, commands)
        name, args = argv[0], argv[1:]
        command = commands[name]
        try:  # the real parser: types, required options, arity
            command.make_context(name, list(args))
        except Exception as exc:  # Click's UsageError / BadParameter / NoSuchOption
            pytest.fail(f"{doc}: `negmerge {' '.join(argv)}` does not parse: {exc}")


def test_demo_options_table_lists_exactly_the_demo_options(commands):
    rows = re.findall(r"^\| `(-[^`|]*)` \|", (DOCS / "demo.md").read_text(), re.M)
    documented = {flag.strip() for row in rows for flag in row.split(",")}
    options = {opt for p in commands["demo"].params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}
    assert documented == options - {"--help", "-h"}


def test_generated_regions_match_the_recorded_run(make_figures):
    data = json.loads(make_figures.RECORD.read_text())
    rendered = make_figures.render(data)
    assert set(rendered) == set(make_figures.REGIONS)
    for name, doc in make_figures.REGIONS.items():
        regions = make_figures.regions_of((DOCS / doc).read_text())
        assert name in regions, f"docs/{doc} has no <!-- generated:{name} --> region"
        assert regions[name] == rendered[name], f"docs/{doc}: region {name} is stale; run `python docs/make_figures.py`"


def test_the_docs_images_exist_and_the_docs_link_them(make_figures):
    for image in ("tradeoff.png", "search-curve.png", "classifier-tradeoff.png"):
        assert (DOCS / "images" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    linked = "".join((DOCS / doc).read_text() for doc in ("demo.md", "eval.md", "report.md"))
    for image in ("tradeoff.png", "search-curve.png", "classifier-tradeoff.png"):
        assert f"images/{image}" in linked


def test_no_doc_runs_the_demo_with_an_output_option():
    """`negmerge demo` takes --workdir/-w; an `-o` there was a stale spelling."""
    for doc in CHECKED:
        assert not re.search(r"negmerge demo[^\n`]*\s-o\b", (DOCS / doc).read_text()), doc
