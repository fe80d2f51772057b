"""Rich progress bars on stderr (silent when quiet, when stderr is not a terminal, or off rank 0)."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


class _Silent:
    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass

    def advance(self, *args, **kwargs):
        pass

    def remove_task(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def progress_bar(quiet: bool):
    """Yields an object with Rich Progress's add_task/update/advance; fields: ``info`` (loss, img/s)."""
    if quiet or not stderr.is_terminal:  # no bar redraws in logs and pipes
        yield _Silent()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        yield bar


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        stderr.print(message, highlight=False, soft_wrap=True)


def make_readable(path) -> None:
    """mkstemp creates 0600 files; give finished outputs the usual umask-based mode."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
