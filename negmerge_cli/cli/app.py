"""The Typer application: one module per command, and the table that maps errors to exit codes.

Nothing heavy is imported here: torch and open_clip load when a command runs, so ``--help`` and
``--version`` answer at once. ``NEGMERGE_DEBUG=1`` adds the traceback behind a one-line error.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from negmerge_cli import __version__
from negmerge_cli.cli import apply, convert, demo, evaluate, finetune, inspect, merge, report, split, vector
from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError, use_cli_option_names
from negmerge_cli.core.invocation import invoked_as
from negmerge_cli.core.output import output

# -- help as written ------------------------------------------------------------------------------

_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")  # what Rich reads as a tag (rich.markup.escape)


def _literal(text: Optional[str]) -> Optional[str]:
    """``text`` as Rich markup that shows it as written: "[default: 0]" stays, not a style tag."""
    return text and _MARKUP_TAG.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)


class _HelpAsWritten:
    """Every command's and the group's help: flags are plain ``--flag`` (Typer's Rich panel would
    print a ``<bool>`` type beside each), and, under Rich markup, square brackets in help texts,
    summaries and epilogs (the examples, :mod:`negmerge_cli.cli.examples`) are text, not markup."""

    rich_markup_mode: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.rich_markup_mode == "rich":
            self.help, self.short_help, self.epilog = map(_literal, (self.help, self.short_help, self.epilog))

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        rich = self.rich_markup_mode == "rich"
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None and hasattr(param, "display_type_rich"):
                param.metavar = ""  # Typer's Rich panel shows a set metavar instead of the type
            if rich and getattr(param, "help", None) and not getattr(param, "_help_as_written", False):
                param.help, param._help_as_written = _literal(param.help), True
        return params


class Command(_HelpAsWritten, TyperCommand):
    pass


class Group(_HelpAsWritten, TyperGroup):
    pass


app = typer.Typer(
    name="negmerge",
    cls=Group,
    help="Unlearning by weight negation (NegMerge) and streaming merges of safetensors checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (split, finetune, convert, vector, merge, apply, inspect, evaluate, report, demo):
    module.register(app)
for registered in app.registered_commands:  # app.command() makes every cls a plain TyperCommand
    if registered.cls in (None, TyperCommand):
        registered.cls = Command


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit."""
    signal.signal(signal.SIGTERM, _terminate)  # clean up temporary files as Ctrl-C does
    sys.exit(run(argv))


def run(argv: list[str] | None) -> int:
    """Run one command; the exit code. Errors are reported by :func:`exit_code_for`."""
    use_cli_option_names(True)
    args = sys.argv[1:] if argv is None else argv
    try:
        with files.operation(), invoked_as(args):
            code = app(args=args or ["--help"], prog_name="negmerge", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into exit code 130 after our cleanup has run
            output().error("interrupted; no output was written")
        return code if isinstance(code, int) else 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line (or re-raises)
        return exit_code_for(exc)
    finally:
        use_cli_option_names(False)  # a Python caller of run() keeps library messages afterwards


def exit_code_for(exc: BaseException) -> int:
    """The error table: report ``exc`` as one line and return its exit code; bugs keep raising."""
    if os.environ.get("NEGMERGE_DEBUG") and not isinstance(exc, SystemExit):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, typer.TyperException):  # bad usage: Click's message, on one line
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context else ""
        output().error(exc.format_message() + hint)
        return getattr(exc, "exit_code", 2)
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        output().error("interrupted; no output was written")
        return 130
    if isinstance(exc, NegmergeError):
        output().error(str(exc))
        return exc.exit_code
    if isinstance(exc, OSError):  # permissions, vanished files...
        where = f"{exc.filename}: " if exc.filename else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        output().error(f"{where}{reason}")
        return 1
    raise exc


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
