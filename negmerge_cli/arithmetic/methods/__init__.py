"""Merge methods: each module registers one or more :class:`MergeMethod` subclasses.

Adding a method means adding one module here; it is discovered automatically.
"""

import importlib
import pkgutil

from negmerge_cli.arithmetic.methods.base import REGISTRY, Chunk, MergeMethod, Param, create_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Chunk", "MergeMethod", "Param", "create_method"]
