"""The defaults the CLI shows and uses are the library's: read from the options dataclasses, so a
command and a Python call with the same arguments get the same values (the CLI holds none)."""

from __future__ import annotations

from dataclasses import MISSING, fields


def default(options_type: type, name: str):
    """The default of field ``name`` of dataclass ``options_type``."""
    for spec in fields(options_type):
        if spec.name == name:
            return spec.default_factory() if spec.default is MISSING else spec.default
    raise KeyError(f"{options_type.__name__} has no field {name!r}")
