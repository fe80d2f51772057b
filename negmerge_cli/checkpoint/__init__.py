"""Checkpoint files: strict safetensors reading, streaming atomic writing, provenance."""

from negmerge_cli.checkpoint.opening import load_state_dict, open_checkpoint
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import provenance
from negmerge_cli.checkpoint.reader import open_regular
from negmerge_cli.checkpoint.writer import OutputTensor, StreamingWriter, save_state_dict

__all__ = [
    "Checkpoint",
    "OutputTensor",
    "StreamingWriter",
    "load_state_dict",
    "open_checkpoint",
    "open_regular",
    "provenance",
    "save_state_dict",
]
