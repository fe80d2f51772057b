"""Numeric precision of training and evaluation.

The paper's released code trains and evaluates in float32 throughout, and its retain bar is tight
(a few hundred-ths of a point decide a lambda), so float32 is the default. Mixed precision
(``bf16``, ``fp16``) is an explicit choice: autocast on the model's device, with a gradient scaler
for fp16 training.
"""

from __future__ import annotations

import contextlib

import torch

from negmerge_cli.core.errors import UsageError, option

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"{option('precision')} {precision!r}: choose fp32 (the paper's), bf16 or fp16")
    return precision


def autocast(precision: str, device: torch.device | str):
    """The autocast context for ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def gradient_scaler(precision: str, device: torch.device | str):
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
