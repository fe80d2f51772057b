"""The Typer application: registers one module per command and maps known errors to exit codes."""

from __future__ import annotations

import errno
import signal
import sys

import typer

from negmerge_cli import __version__
from negmerge_cli.cli import apply, demo, evaluate, finetune, inspect, merge, vector
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

for module in (finetune, vector, merge, apply, inspect, evaluate, demo):
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit."""
    signal.signal(signal.SIGTERM, _terminate)  # clean up temporary files as Ctrl-C does
    sys.exit(_run(argv))


def _run(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="negmerge", standalone_mode=False)
        if code == 130:  # Typer turns Ctrl-C into exit code 130 after our cleanup has run
            print_error("interrupted; no output was written")
        return code if isinstance(code, int) else 0
    except typer.TyperException as exc:  # bad usage: Click's message, on one line
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context else ""
        print_error(exc.format_message() + hint)
        return getattr(exc, "exit_code", 2)
    except (KeyboardInterrupt, typer.Abort):
        print_error("interrupted; no output was written")
        return 130
    except NegmergeError as exc:
        print_error(str(exc))
        return exc.exit_code
    except OSError as exc:  # permissions, vanished files...
        where = f"{exc.filename}: " if exc.filename else ""
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        print_error(f"{where}{reason}")
        return 1


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
