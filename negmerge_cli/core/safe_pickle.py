"""Unpickling untrusted bytes: the one way the tool turns a pickle into objects.

A pickle is a small program: every global it names is imported and may be called, so unpickling an
untrusted file with :mod:`pickle` can run ``os.system``. Here each global a pickle names (GLOBAL,
STACK_GLOBAL, INST, OBJ) goes through the caller's allow-list, ``allowed(qualified_name)``, which
returns the object to use (the real one, or an inert stand-in) or ``None``; nothing else is ever
imported, and a refused name raises :class:`ForbiddenGlobal` before anything is called. Persistent
ids (how ``torch.save`` points at tensor storages) go to the caller's ``persistent_load``; without
one they are refused too.

Every reader of a pickle (``convert``'s PyTorch checkpoints, the CIFAR batches) uses :func:`load`
with its own allow-list, inside :func:`failures_as` for its one-line errors.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import pickle
from pathlib import Path
from typing import IO, Callable, Iterator

from negmerge_cli.core.errors import NegmergeError

Allowed = Callable[[str], object]  # qualified name -> the object to use, or None to refuse


class ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, qualified_name: str):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


def qualified(module: str, name: str) -> str:
    """``module.name`` as Python 3 spells it: pickle's own mapping of Python 2 names (protocol 2
    writes ``__builtin__ set``), which overriding ``find_class`` would otherwise skip."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: Allowed, persistent_load, encoding: str):
        super().__init__(file, encoding=encoding)
        self._allowed, self._persistent_load = allowed, persistent_load

    def find_class(self, module: str, name: str):
        name = qualified(module, name)
        found = self._allowed(name)
        if found is None:
            raise ForbiddenGlobal(name)
        return found

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise pickle.UnpicklingError("a persistent id, which this file has no use for")
        return self._persistent_load(pid)


def load(file: IO[bytes], allowed: Allowed, *, persistent_load: Callable[[object], object] | None = None,
         encoding: str = "utf-8") -> object:
    """One pickle from the binary stream ``file`` (left just after it), through the allow-list."""
    return _Unpickler(file, allowed, persistent_load, encoding).load()


def nothing(name: str) -> None:
    """The allow-list of pickles that are plain data (numbers, strings, lists, dicts)."""
    return None


@contextlib.contextmanager
def failures_as(path: Path, what: str, error: type[NegmergeError] = NegmergeError) -> Iterator[None]:
    """Reading ``path`` (a ``what``, e.g. "PyTorch checkpoint") fails in one line: a refused global
    says so, and the many ways pickle and its callers fail on damaged bytes all mean the same."""
    try:
        yield
    except NegmergeError:
        raise
    except ForbiddenGlobal as refused:
        raise error(f"{path}: refused: its pickle asks for '{refused.qualified_name}', which a {what} has no use "
                    "for (not on the allow-list; nothing was run)") from None
    except Exception as exc:  # noqa: BLE001 -- damaged input fails in many ways; all mean the same here
        text = str(exc).strip()
        reason = text.split(". ")[0].splitlines()[0][:160] if text else type(exc).__name__
        raise error(f"{path}: not a readable {what} (damaged or truncated?): {reason}") from None
