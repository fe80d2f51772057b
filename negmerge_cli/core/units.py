"""Parsing of user-facing quantities: memory sizes, devices, dtypes."""

from __future__ import annotations

import re
from decimal import Decimal

import torch

from negmerge_cli.core.errors import UsageError
from negmerge_cli.core.limits import SIZE

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([KMGT]?)(i?)B?\s*", re.IGNORECASE | re.ASCII)
_OUTPUT_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def parse_size(text: str, option: str) -> int:
    """'512MB', '2GiB', '1e6'... -> bytes. Decimal units for KB/MB/GB, binary for KiB/MiB/GiB.

    Exact decimal arithmetic: no float overflow or NaN (400 digits, 1e400) and no int-conversion
    limit; a result outside :data:`negmerge_cli.core.limits.SIZE` (1 byte .. 1 EiB) is refused before
    anything uses it."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise UsageError(f"{option} {text!r}: not a size (examples: 512MB, 2GiB, 1000000)")
    number, prefix, binary = match.groups()
    scale = (1024 if binary else 1000) ** " KMGT".index(prefix.upper() or " ")
    try:
        value = Decimal(number) * scale
    except ArithmeticError:  # an exponent beyond what Decimal represents
        value = None
    if value is None or not SIZE.low <= value <= SIZE.high:
        raise UsageError(f"{option} {text!r}: must be {SIZE.requirement}")
    return int(value)


def resolve_device(text: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' as given (checked)."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")
    return device


def parse_dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    dtype = _OUTPUT_DTYPES.get(text.lower())
    if dtype is None:
        raise UsageError(f"--dtype {text!r}: choose float32, float16, bfloat16 or float64")
    return dtype
