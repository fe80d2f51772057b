"""The library API: one function per stage; the CLI commands are thin wrappers around these.

Names are imported lazily, so using one stage never pays for another's imports (open_clip is slow).
"""

from importlib import import_module

_EXPORTS = {
    "StreamOptions": "common",
    "StreamResult": "common",
    "apply_vector": "apply",
    "inspect_checkpoint": "inspect",
    "make_vector": "vector",
    "make_vectors": "vector",
    "merge_vectors": "merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
