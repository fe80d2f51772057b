"""The library API: one function per stage; the CLI commands are thin wrappers around these."""

from negmerge_cli.stages.apply import apply_vector
from negmerge_cli.stages.common import StreamOptions, StreamResult
from negmerge_cli.stages.inspect import inspect_checkpoint
from negmerge_cli.stages.merge import merge
from negmerge_cli.stages.vector import make_vector, make_vectors

__all__ = [
    "StreamOptions",
    "StreamResult",
    "apply_vector",
    "inspect_checkpoint",
    "make_vector",
    "make_vectors",
    "merge",
]
