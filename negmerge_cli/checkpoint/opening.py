"""The one way to open what the tool reads as a checkpoint: a safetensors file, a sharded
checkpoint (index or folder), a one-file folder, or a PEFT LoRA adapter folder (opened as the task
vector it makes)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from negmerge_cli.checkpoint import lora
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.reader import open_safetensors


def open_checkpoint(path: str | os.PathLike, digest: bool = True, rehash: bool = False) -> Checkpoint:
    """``digest``: provide each file's SHA-256 (from the digest cache, or hashed while reading);
    ``rehash``: never trust the cache."""
    path = Path(path)
    if lora.is_adapter_folder(path):
        return lora.open_adapter(path, digest, rehash)
    return open_safetensors(path, digest, rehash)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, validated, as a dict of CPU tensors (no SHA-256: nobody
    records it)."""
    with open_checkpoint(path, digest=False) as checkpoint:
        return {name: checkpoint.read_tensor(name) for name in checkpoint.names}
