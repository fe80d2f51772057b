"""The CLI's face: `negmerge --help` lists every command with its one-line summary, whole; every
command's --help ends with examples that are shown as written and parse; flags show no type."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import typer.main

from negmerge_cli.cli.app import _literal, app
from negmerge_cli.cli.examples import EXAMPLES

COMMANDS = ["split", "finetune", "convert", "vector", "merge", "apply", "inspect", "eval", "report", "demo"]
SUMMARIES = {info.name: info.short_help for info in app.registered_commands}


def negmerge(*args: str, columns: int = 100, **env: str) -> str:
    """``negmerge ARGS`` in a subprocess, as a user runs it; stdout (asserting success)."""
    result = subprocess.run([sys.executable, "-m", "negmerge_cli", *args], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": str(columns), **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def help_of(cli, monkeypatch, command: str) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def physical_lines(example: str) -> list[str]:
    return example.split("\n")


def test_the_commands_are_the_ones_with_summaries_and_examples():
    assert list(SUMMARIES) == COMMANDS
    assert sorted(EXAMPLES) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_summary_is_one_short_sentence(command):
    summary = SUMMARIES[command]
    assert summary and summary == summary.strip() and "\n" not in summary
    assert summary.endswith(".") and summary[0].isupper(), summary
    assert ". " not in summary, f"one sentence: {summary!r}"
    assert len(summary) <= 60, f"fits an 80-column terminal's command table: {summary!r}"


@pytest.mark.parametrize("columns", [80, 100])
def test_root_help_lists_every_command_with_its_whole_summary_on_one_line(columns):
    lines = negmerge("--help", columns=columns).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("╭─ Commands"))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("╰"))
    rows = [line.strip("│ ").split(None, 1) for line in lines[start + 1:end]]
    assert [row[0] for row in rows] == COMMANDS, "one line per command, no continuation lines:\n" + "\n".join(lines)
    for command, summary in rows:
        assert summary.strip() == SUMMARIES[command], f"{command}: the table shows {summary.strip()!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_examples_shown_as_written(cli, monkeypatch, command):
    text = help_of(cli, monkeypatch, command)
    lines = [line.strip() for line in text.splitlines()]
    assert "Examples:" in lines, text
    after = lines[lines.index("Examples:") + 1:]
    assert any(line == f"negmerge {command}" or line.startswith(f"negmerge {command} ") for line in after), text
    for example in EXAMPLES[command]:
        for line in physical_lines(example):
            assert line.strip() in after, f"{command}: example line not shown as written: {line!r}\n{text}"
    shown = [line for line in after if line]
    assert shown == [line.strip() for example in EXAMPLES[command] for line in physical_lines(example)], \
        "the examples end the help, one line each"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_keeps_the_longer_description(cli, monkeypatch, command):
    text = " ".join(help_of(cli, monkeypatch, command).split())
    description = typer.main.get_command(app).commands[command].help
    first_sentence = " ".join(description.split())[:40]
    assert first_sentence in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_is_a_valid_command_line(command):
    """Each example parses with the command's real options and arguments (nothing runs)."""
    click_command = typer.main.get_command(app).commands[command]
    for example in EXAMPLES[command]:
        args = shlex.split(example.replace("\\\n", " "))
        assert args[:2] == ["negmerge", command], example
        click_command.make_context(command, args[2:])  # raises on an unknown option or a bad value
        for line in physical_lines(example):
            assert len(line) <= 76, f"fits an 80-column terminal (2-column indent, 1 of padding): {line!r}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_flags_show_no_type(cli, monkeypatch, command):
    if command is None:
        monkeypatch.setenv("COLUMNS", "200")
        text = cli("--help").stdout
    else:
        monkeypatch.setenv("COLUMNS", "200")
        text = cli(command, "--help").stdout
    assert "--help" in text
    assert "<bool>" not in text and "BOOLEAN" not in text, text
    help_row = next(line for line in text.splitlines() if "--help" in line)
    assert help_row.split("--help", 1)[1].strip("│ ").replace("-h", "", 1).strip().startswith("Show this"), help_row


def test_without_rich_the_examples_stay_one_per_line_and_flags_plain():
    text = negmerge("merge", "--help", columns=80, TYPER_USE_RICH="0")
    lines = [line.strip() for line in text.splitlines()]
    assert "Examples:" in lines and "<bool>" not in text and "BOOLEAN" not in text
    for example in EXAMPLES["merge"]:
        for line in physical_lines(example):
            assert line in lines, (line, text)


@pytest.mark.parametrize("text", [
    "[default: ~/.cache/negmerge_cli]", "x [b]bold[/b] y", "[red]", r"\[b] and \\[i]", "[0, 1) and [int]", "a [/] b",
])
def test_help_texts_are_not_rich_markup(text):
    from rich.text import Text

    assert Text.from_markup(_literal(text)).plain == text
