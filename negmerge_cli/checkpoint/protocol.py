"""What every stage reads a checkpoint through: named tensors, read whole or as flat element ranges,
and the SHA-256 of the files behind them. Safetensors files and sharded checkpoints
(:class:`~negmerge_cli.checkpoint.reader.SafetensorsCheckpoint`) and LoRA adapter folders
(:class:`~negmerge_cli.checkpoint.lora.LoraAdapter`) both offer it; ``open_checkpoint`` picks one."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from negmerge_cli.checkpoint.format import TensorEntry


@runtime_checkable
class Checkpoint(Protocol):
    path: Path
    metadata: dict[str, str]
    files: list  # the files read, each with ``path`` and its digest once known

    @property
    def names(self) -> list[str]: ...

    def __contains__(self, name: str) -> bool: ...

    def entry(self, name: str) -> TensorEntry: ...

    def read(self, name: str, start: int = 0, stop: int | None = None, pin: bool = False) -> torch.Tensor:
        """Elements ``start:stop`` of tensor ``name``, flat, a fresh CPU tensor (reads feed no
        digest: each file is hashed whole, apart from the reads)."""

    def read_tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` whole, in its shape."""

    def file_hashes(self) -> dict[str, str]: ...

    @property
    def hashes_known(self) -> bool: ...

    @property
    def total_bytes(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Checkpoint": ...

    def __exit__(self, *exc: object) -> None: ...
