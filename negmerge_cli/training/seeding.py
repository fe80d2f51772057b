"""One seed for every random number generator a training run draws from."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """torch for sampling and initialisation; Python's and NumPy's generators for augmentations
    (timm's RandAugment and random-resized crop draw from ``random``) run in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
