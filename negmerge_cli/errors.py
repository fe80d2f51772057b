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
