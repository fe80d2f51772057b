"""Tensors a task vector leaves out because they are zero in every element.

A vector of an image-encoder fine-tune would otherwise store the whole, all-zero text tower. Such
tensors are written to no file; the metadata key ``negmerge.zero_tensors`` lists them with their
dtype and shape, so that readers treat them as zeros (never as missing) and can still check shapes
and promote dtypes exactly as they would for the stored zeros:

    {"text.proj": {"dtype": "F32", "shape": [512, 512]}, ...}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod
from typing import Iterable

import torch

from negmerge_cli.checkpoint.format import DTYPE_CODES, DTYPES, is_float, shape_numel
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.core.errors import CheckpointError
from negmerge_cli.core.strict_json import load_json, show

ZERO_TENSORS_KEY = PREFIX + "zero_tensors"


@dataclass(frozen=True)
class ZeroTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)


def read_zero_tensors(checkpoint: Checkpoint) -> dict[str, ZeroTensor]:
    """The tensors ``checkpoint`` records as omitted zeros, validated (CheckpointError otherwise)."""
    raw = checkpoint.metadata.get(ZERO_TENSORS_KEY)
    if raw is None:
        return {}
    where = f"{checkpoint.path}: metadata {ZERO_TENSORS_KEY}"
    parsed = load_json(raw.encode("utf-8"), where)
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    return {name: _parse(checkpoint, where, name, spec) for name, spec in parsed.items()}


def _parse(checkpoint: Checkpoint, where: str, name: str, spec: object) -> ZeroTensor:
    where = f"{where}: tensor '{name}'"
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise CheckpointError(f"{where}: expected {{\"dtype\", \"shape\"}}, got {show(spec)}")
    code, shape = spec["dtype"], spec["shape"]
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None or not is_float(dtype):
        raise CheckpointError(f"{where}: {show(code)} is not a floating-point dtype")
    if shape_numel(shape) is None:
        raise CheckpointError(f"{where}: invalid shape {show(shape)}")
    if name in checkpoint:
        raise CheckpointError(f"{where}: also stored in the file")
    return ZeroTensor(name, dtype, tuple(shape))


def zero_tensors_metadata(zeros: Iterable[ZeroTensor]) -> dict[str, str]:
    """The metadata entry listing ``zeros`` (nothing when there are none)."""
    listed = {z.name: {"dtype": DTYPE_CODES[z.dtype], "shape": list(z.shape)} for z in zeros}
    return {ZERO_TENSORS_KEY: json.dumps(listed, separators=(",", ":"))} if listed else {}
