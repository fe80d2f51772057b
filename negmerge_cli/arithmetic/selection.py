"""Tensor selection (``--include GLOB`` / ``--exclude GLOB``): which tensors a command works on.

One value object shared by ``vector``, ``merge``, ``apply`` and ``inspect``. Globs are shell-style
(``fnmatch``, case-sensitive; ``*`` also matches dots, so ``visual.*`` is the whole visual tower).
A tensor is selected when it matches some ``include`` glob (every tensor when none is given) and no
``exclude`` glob. Globs are checked against the inputs: one that matches no tensor is a typo, and
an error rather than a silent no-op; so is a selection that leaves nothing to work on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Iterable

from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.core.errors import UsageError, option

INCLUDE_KEY = PREFIX + "include"
EXCLUDE_KEY = PREFIX + "exclude"


@dataclass(frozen=True)
class TensorSelection:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("include", "exclude"):
            globs = getattr(self, key)
            if isinstance(globs, str):  # a lone string would otherwise become one glob per character
                globs = (globs,)
            globs = tuple(globs)
            for glob in globs:
                if not isinstance(glob, str) or not glob:
                    raise UsageError(f"{option(key)} {glob!r}: a glob must be a non-empty string")
            object.__setattr__(self, key, globs)

    @property
    def restricts(self) -> bool:
        return bool(self.include or self.exclude)

    def matches(self, name: str) -> bool:
        included = not self.include or any(fnmatchcase(name, glob) for glob in self.include)
        return included and not any(fnmatchcase(name, glob) for glob in self.exclude)

    def check_globs(self, names: Iterable[str]) -> None:
        """Every glob must match some tensor of the inputs (``names``)."""
        names = list(names)
        for key in ("include", "exclude"):
            for glob in getattr(self, key):
                if not any(fnmatchcase(name, glob) for name in names):
                    raise UsageError(f"{option(key)} '{glob}': matches no tensor of the inputs")

    def pick(self, candidates: Iterable[str], everything: Iterable[str], what: str) -> list[str]:
        """The selected ``candidates`` after checking the globs against ``everything``; an empty
        result of a restricting selection is an error (``what``: e.g. "tensor to merge")."""
        self.check_globs(everything)
        picked = [name for name in candidates if self.matches(name)]
        if self.restricts and not picked:
            raise UsageError(f"{self.describe()}: leaves no {what}")
        return picked

    def describe(self) -> str:
        """The selection as the user wrote it, e.g. ``--include 'visual.*' --exclude '*.bias'``."""
        return " ".join(f"{option(key)} '{glob}'" for key in ("include", "exclude") for glob in getattr(self, key))

    def metadata(self) -> dict[str, str]:
        """Output metadata recording the selection (nothing when every tensor is selected)."""
        entries = {INCLUDE_KEY: self.include, EXCLUDE_KEY: self.exclude}
        return {key: json.dumps(list(globs)) for key, globs in entries.items() if globs}


EVERYTHING = TensorSelection()
