"""Strict JSON: how the tool parses every JSON it reads (checkpoint headers and indexes here; adapter
configs, forget splits, results, sweep files and stored accuracies through negmerge_cli.core.schema).

``json.loads`` accepts things no writer of these files produces and that turn into silently wrong
results or tracebacks downstream: duplicate keys (the last one silently wins), ``NaN`` and
``Infinity``, numbers too large for a float (``1e999`` becomes infinity), integers thousands of
digits long (ValueError past Python's conversion limit, slow arithmetic below it), and nesting deep
enough to raise RecursionError. :func:`load_json` refuses all of them with one error; what remains
is plain dicts, lists, strings, bools, finite floats and integers of at most 20 digits, which the
validators of each structure (checkpoint/format.py, negmerge_cli.core.schema) then check field by field.
"""

from __future__ import annotations

import json
import math
import reprlib

from negmerge_cli.core.errors import CheckpointError, NegmergeError

# 20 digits hold any unsigned 64-bit value, the largest count a safetensors file can express.
MAX_INT_DIGITS = 20

_shortened = reprlib.Repr()
_shortened.maxstring = _shortened.maxother = 60


class _Refused(ValueError):
    """Raised from inside the decoder hooks; carries the complete reason."""


def load_json(raw: bytes, what: str, error: type[NegmergeError] = CheckpointError) -> object:
    """Parse ``raw``; ``what`` names it in errors, e.g. ``"/x/model.safetensors: header"``;
    ``error`` is the class raised."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                          parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be valid") from None
    except _Refused as refused:
        raise error(f"{what} {refused}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None


def show(value: object) -> str:
    """A repr short enough for a one-line error, whatever the value (hostile lists can be huge)."""
    return _shortened.repr(value)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"has duplicate key {show(key)}")
        result[key] = value
    return result


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"has an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"has a number too large for a float ({show(text)})")
    return value


def _no_constant(name: str) -> object:
    raise _Refused(f"is not valid JSON ({name} is not a JSON value)")
