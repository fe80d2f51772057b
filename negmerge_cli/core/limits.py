"""The range of every number a user gives, in one table per command, and the one check of it.

A value out of range, NaN, infinite, or of the wrong kind (``1.5`` where a count is meant, which
``int()`` would truncate without a word) is refused as one line naming the option
(``--seed -1: must be in [0, 4294967295]``; the keyword for library callers, as
:func:`negmerge_cli.core.errors.option` spells it). The same table is checked twice: when the CLI has
parsed a command's options (:func:`negmerge_cli.cli.options.with_options`), and when a library
caller builds the options (the option dataclasses' ``__post_init__``, and the entry points that take
loose values: ``make_forget_split``, merge methods, ``apply_vector``). Sizes (``--max-memory``...)
are strings: :func:`negmerge_cli.core.units.parse_size` reads them and checks :data:`SIZE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Mapping, Optional

from negmerge_cli.core.errors import UsageError, option


@dataclass(frozen=True)
class Range:
    """Numbers of one kind (``int`` or ``float``) between ``low`` and ``high`` (None: unbounded;
    open ends excluded); floats are always finite."""

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    words: str = ""  # the requirement in words, where they say it better than an interval

    @property
    def requirement(self) -> str:
        if self.words:
            return self.words
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.open_low else '['}{_show(self.low)}, "
                    f"{_show(self.high)}{')' if self.open_high else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {_show(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {_show(self.high)}"
        return what

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def check(self, name: str, value):
        """``value`` when it is in range; else one line naming option ``name``."""
        if self.contains(value):
            return value
        if isinstance(value, bool) or not isinstance(value, Real):
            raise UsageError(f"{option(name)} {value!r}: must be {'an integer' if self.kind is int else 'a number'}")
        if self.kind is int and not isinstance(value, Integral):
            raise UsageError(f"{option(name)} {value!r}: must be an integer ({self.requirement})")
        raise UsageError(f"{option(name)} {value}: must be {self.requirement}")


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


# -- the kinds of number -------------------------------------------------------------------------

MAX_COUNT = 2**31 - 1  # counts and indices: what torch and numpy index with int32, far past any real run
COUNT = Range(int, 1, MAX_COUNT)
COUNT_OR_ZERO = Range(int, 0, MAX_COUNT)
INDEX = Range(int, 0, MAX_COUNT)
CLASSES = Range(int, 2, MAX_COUNT)
WORKERS = Range(int, 0, 1024)  # DataLoader processes: more would exhaust any machine's process table
FINITE = Range(float)
PROBABILITY = Range(float, 0.0, 1.0)
PROBABILITY_BELOW_ONE = Range(float, 0.0, 1.0, open_high=True)
FRACTION = Range(float, 0.0, 1.0, open_low=True)  # (0, 1]: a share that keeps something
# Seeds, by the generators they reach:
# - finetune: torch.manual_seed, numpy (legacy seeding: < 2**32) and random, each with the seed plus a
#   torchrun rank added, so the seed stays below 2**31;
TRAIN_SEED = Range(int, 0, 2**31, open_high=True)
# - split: numpy's PCG64 (its SeedSequence takes any non-negative integer; 32 bits, as numpy's
#   legacy seeding, keep the split JSON's seed a plain number);
NUMPY_SEED = Range(int, 0, 2**32 - 1)
# - dare: a 64-bit key of the tool's own counter-based generator (methods/dare.py).
KEY_SEED = Range(int, 0, 2**64 - 1)
MAX_SIZE = 1 << 60  # 1 EiB: beyond any machine, and keeps every size computed from it in int64
SIZE = Range(int, 1, MAX_SIZE, words="between 1 byte and 1 EiB")

# -- the table: every numeric option of every command, by its keyword name ----------------------

LIMITS: dict[str, dict[str, Range]] = {
    "finetune": {
        # the grid (negmerge_cli.training.sweep.Grid): every value of each list
        "lr": Range(float, 0.0, open_low=True), "wd": Range(float, 0.0), "label_smoothing": PROBABILITY_BELOW_ONE,
        "epochs": COUNT, "steps": COUNT, "seed": TRAIN_SEED,
        # FinetuneOptions (negmerge_cli.training.options)
        "batch_size": COUNT, "accum_steps": COUNT, "warmup_steps": COUNT_OR_ZERO, "workers": WORKERS,
        "point": INDEX, "eval_batch_size": COUNT, "crop_scale": FRACTION, "hflip": PROBABILITY,
        "num_classes": CLASSES, "milestones": COUNT, "saliency_fraction": FRACTION, "l1_alpha": Range(float, 0.0),
    },
    "eval": {
        # EvalOptions, SearchOptions (negmerge_cli.training.options)
        "batch_size": COUNT, "workers": WORKERS, "coefs": FINITE, "threshold": FRACTION, "refine": COUNT_OR_ZERO,
        "num_classes": CLASSES,
    },
    "split": {"forget_fraction": Range(float, 0.0, 1.0, True, True, words="strictly between 0 and 1"), "forget_classes": INDEX,
              "seed": NUMPY_SEED},
    "merge": {"weight": FINITE, "density": FRACTION, "drop_rate": PROBABILITY_BELOW_ONE, "seed": KEY_SEED},
    "apply": {"scale": FINITE},
}


def check(command: str, name: str, value):
    """``value`` (a number, or a list of them, each checked; None: not given) of option ``name`` of
    ``command``, in range or refused."""
    limit = LIMITS[command][name]
    if value is not None and not _is_sequence(value):
        limit.check(name, value)
    elif value is not None:
        for item in value:
            limit.check(name, item)
    return value


def check_values(command: str, values: Mapping[str, object]) -> None:
    """Every value in ``values`` whose name the command's table lists."""
    table = LIMITS[command]
    for name, value in values.items():
        if name in table:
            check(command, name, value)


def check_fields(command: str, options) -> None:
    """Every field of dataclass ``options`` that the command's table lists."""
    check_values(command, {f.name: getattr(options, f.name) for f in fields(options)})


def check_parsed(command: str, values: Mapping[str, object]) -> None:
    """The CLI's check right after parsing: every number the command was given. Values the command
    still has to parse (a grid's comma-separated strings, sizes) are checked when they are parsed."""
    if command in LIMITS:
        check_values(command, {name: value for name, value in values.items() if _numbers(value)})


def _is_sequence(value) -> bool:
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes))


def _numbers(value) -> bool:
    items = list(value) if _is_sequence(value) else [value]
    return bool(items) and all(isinstance(v, Real) and not isinstance(v, bool) for v in items)
