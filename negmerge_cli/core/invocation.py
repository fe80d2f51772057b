"""The command line of the running CLI command, for the model cards of output folders.

Kept apart from the checkpoint package so that the CLI can record it without importing torch."""

from __future__ import annotations

import contextlib
import shlex
from typing import Iterator

_command_lines: list[str] = []


@contextlib.contextmanager
def invoked_as(args: list[str]) -> Iterator[None]:
    """Record ``negmerge ARGS...`` as the running command while the block runs."""
    _command_lines.append(shlex.join(["negmerge", *args]))
    try:
        yield
    finally:
        _command_lines.pop()


def command_line() -> str | None:
    """The running CLI command, shell-quoted; None for a library call."""
    return _command_lines[-1] if _command_lines else None
