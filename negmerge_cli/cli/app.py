"""The Typer application: registers one module per command and maps known errors to exit codes."""

from __future__ import annotations

import errno
import sys

import typer

from negmerge_cli import __version__
from negmerge_cli.cli import apply, evaluate, finetune, inspect, merge, vector
from negmerge_cli.cli.console import print_error
from negmerge_cli.errors import NegmergeError

app = typer.Typer(
    name="negmerge",
    help="Unlearning by weight negation (NegMerge) and streaming merges of safetensors checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (finetune, vector, merge, apply, inspect, evaluate):
    module.register(app)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"negmerge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Unlearning by weight negation (NegMerge) and streaming merges of safetensors checkpoints."""


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except NegmergeError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # permissions, full disk outside our writers, vanished files...
        where = f"{exc.filename}: " if exc.filename else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        print_error(f"{where}{reason}")
        sys.exit(1)
