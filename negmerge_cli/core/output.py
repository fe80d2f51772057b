"""The one output object: everything the tool says to a person goes through ``output()``.

Results meant for programs (JSON, a chosen lambda) go to stdout or files; everything for people
(logs, warnings, errors, tables, progress bars) goes to stderr through the current :class:`Output`,
so a pipe or a Makefile gets clean stdout. Quiet mode silences logs, tables and progress, never
errors or warnings. The CLI configures it once per command (``--quiet``); library callers use
:func:`configure` or :meth:`Output.silenced`.

Every text shown is made printable first: file and tensor names come from users and files, and a
name holding escape sequences must not drive the terminal. Nor is any text read as Rich markup or
emoji codes (:func:`plain_console`): a file named ``[/]x`` or ``[bold]x`` shows as itself. The other
output languages (Markdown, YAML, plot labels, JSON) have their escaping in
:mod:`negmerge_cli.core.escape`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

from rich.console import Console
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
Advance = Callable[..., None]  # advance(n, note=None)


def printable(text: object) -> str:
    """``text`` with control characters (escape sequences, NULs, carriage returns) shown as
    ``\\xNN``; tabs and newlines stay (an error line joins its lines)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))


def plain_console(stderr: bool = False) -> Console:
    """A Rich console that shows every string as it is: no markup, no emoji codes, no highlighting."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False)


class Output:
    """Console on stderr, progress bars and quiet mode, shared by the CLI and the library."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or plain_console(stderr=True)

    def log(self, message: str) -> None:
        """A line of information (suppressed when quiet)."""
        if not self.quiet:
            self.console.print(printable(message), markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A one-line warning; shown even when quiet."""
        self.console.print(_labelled("warning:", "bold yellow", message), soft_wrap=True)

    def error(self, message: str) -> None:
        """The one ``error:`` line of a failed command."""
        self.console.print(_labelled("error:", "bold red", message), soft_wrap=True)

    def show(self, renderable) -> None:
        """A Rich table or other renderable (suppressed when quiet)."""
        if not self.quiet:
            self.console.print(renderable)

    @contextlib.contextmanager
    def progress(self, description: str, total: int, unit: str = "items") -> Iterator[Advance]:
        """Yield ``advance(n, note="")`` driving a progress bar (``note``: e.g. loss and img/s); a
        no-op when quiet or when stderr is no terminal (logs and CI stay clean).

        ``unit="bytes"`` shows sizes and transfer speed. The bar disappears when done or failed, so
        an error stays the one line that explains it."""
        if self.quiet or not self.console.is_terminal:
            yield lambda n, note=None: None
            return
        from rich.progress import Progress

        with Progress(*_columns(unit), console=self.console, transient=True) as bar:
            task = bar.add_task(printable(description), total=total, note="")

            def advance(n: int, note: str | None = None) -> None:
                bar.update(task, advance=n, **({"note": note} if note is not None else {}))

            yield advance

    @contextlib.contextmanager
    def silenced(self) -> Iterator[None]:
        """Quiet for the duration (e.g. on torchrun ranks other than 0)."""
        before, self.quiet = self.quiet, True
        try:
            yield
        finally:
            self.quiet = before


def _columns(unit: str) -> tuple:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    if unit == "bytes":
        return (TextColumn("{task.description}", style="bold", markup=False), BarColumn(), TaskProgressColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn())


def _labelled(label: str, style: str, message: str) -> Text:
    """``label`` styled, then ``message`` on the same line (printable first: a carriage return shows as \\x0d)."""
    return Text.assemble((label, style), " ", " ".join(printable(message).splitlines()))


_current = Output()


def output() -> Output:
    """The output object in use."""
    return _current


def configure(quiet: bool = False) -> Output:
    """Set quiet mode for everything that follows (the CLI calls this once per command)."""
    _current.quiet = quiet
    return _current
