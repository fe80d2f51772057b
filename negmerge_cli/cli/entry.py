"""The console script's target: nothing is imported before Ctrl-C is handled, so an interrupt
during start-up (while Typer or torch load) is one line and exit code 130, not a traceback."""

import sys


def main() -> None:
    try:
        from negmerge_cli.cli.app import main as run_app
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run_app()
