"""Where the CLI writes: results (JSON, chosen values) to stdout, everything for humans to stderr."""

from __future__ import annotations

from rich.console import Console

# Progress bars, tables and logs go to stderr so stdout stays clean for pipes and Makefiles.
stderr = Console(stderr=True)


def print_error(message: str) -> None:
    # One line, no markup interpretation: file names may contain brackets.
    stderr.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True, highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(text.splitlines()))
