"""Modules imported on first use, so that ``negmerge --help`` does not pay for torch (seconds).

Modules that the command line needs at start-up (the merge-method registry, whose parameters
become ``merge`` options) use ``from negmerge_cli.core.lazy import torch`` instead of ``import torch``;
every ``torch.X`` then works as usual, the first one importing torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        module: ModuleType = importlib.import_module(self._name)
        value = getattr(module, attribute)
        setattr(self, attribute, value)  # cached: later look-ups are plain attribute reads
        return value

    def __dir__(self) -> list[str]:
        """The module's names (importing it), so that completion on ``torch.`` works as usual."""
        return dir(importlib.import_module(self._name))


torch = LazyModule("torch")
