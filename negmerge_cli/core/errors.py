"""Errors that the CLI reports as one line, with a non-zero exit and no traceback.

Library code raises these for anything a user can cause (bad files, bad options); anything else is a
bug and keeps its traceback.
"""


class NegmergeError(Exception):
    """A problem with the user's input or environment, reported as ``error: <message>``."""

    exit_code = 1


class UsageError(NegmergeError):
    """An option or argument value that cannot work (unknown method, density out of range...)."""

    exit_code = 2


class CheckpointError(NegmergeError):
    """A checkpoint file that is missing, malformed, or inconsistent with the other inputs."""


class OutputError(NegmergeError):
    """The output cannot be written (exists, equals an input, disk full...)."""


# How messages name an option: as the command line spells it (``--max-memory``) when the CLI runs,
# as the Python keyword (``max_memory``) for library callers. The library never hard-codes flags.
_cli_names = False


def use_cli_option_names(enabled: bool = True) -> None:
    global _cli_names
    _cli_names = enabled


def option(name: str) -> str:
    """The user-facing name of option ``name`` (a keyword such as ``max_memory``)."""
    return "--" + name.replace("_", "-") if _cli_names else name


def switch(name: str) -> str:
    """How to turn on boolean option ``name``: ``--force`` on the command line, ``force=True`` in Python."""
    return option(name) if _cli_names else f"{name}=True"
