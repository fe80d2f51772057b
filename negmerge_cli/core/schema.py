"""Every JSON file the tool reads, read one way: strictly parsed, then checked against a typed schema,
every failure one line naming the file and the field.

:func:`read` is the loader: a regular file of bounded size (never a FIFO or device), parsed by
:func:`negmerge_cli.core.strict_json.load_json` (no duplicate keys, NaN, Infinity, huge numbers or deep
nesting), then validated by a pydantic model in strict mode: no string for a number, no float (not
even ``2.0``) or ``true`` for an integer, no list for an object, finite floats only. Ranges and
cross-field rules (indices within the dataset, no duplicates) live in the schemas too, so a file that
passes is one the code can use without further checks. :func:`describe` turns a validation failure
into ``FILE: field 'forget_indices[3]': expected an integer, got 2.5``.

Unknown fields: a schema derived from :class:`Schema` ignores them (results and sweep records that
an older or newer version wrote stay readable; configs written by other tools, such as PEFT's, grow
fields all the time); one derived from :class:`Closed` refuses them (files whose every field is part
of an identity, where a misspelt key must not pass unnoticed).

Pydantic is imported here only: modules that read JSON import this package inside the function
that reads, so commands that read no such file do not pay for it.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError, UsageError
from negmerge_cli.core.strict_json import load_json, show

T = TypeVar("T")
MAX_FILE_BYTES = 64 << 20  # the JSON files the tool reads are small: a larger one is not one of them


class Schema(BaseModel):
    """A JSON structure the tool reads: strict types, finite numbers, unknown fields ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore", frozen=True)


class Closed(Schema):
    """A structure whose every field is known: an unknown one is refused."""

    model_config = ConfigDict(extra="forbid")


Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Object = dict[str, Any]  # free-form (an identity, settings): any JSON values, but an object


class FieldProblem(ValueError):
    """Raised by a schema's validator about one element of a field: ``at`` extends the field's path
    (``FieldProblem("is out of range", 3)`` in ``forget_indices`` -> ``forget_indices[3]``)."""

    def __init__(self, message: str, *at: int | str):
        super().__init__(message)
        self.at = at


def read(path: str | os.PathLike, schema: type[T] | Any, *, error: type[NegmergeError] = UsageError,
         what: str = "this file", where: str | None = None, limit: int = MAX_FILE_BYTES, register: bool = True) -> T:
    """The one loader: the file at ``path`` as ``schema`` (a model, or a type such as
    ``list[Model]``). See :func:`load` for the arguments."""
    data = load(path, error=error, what=what, where=where, limit=limit, register=register)
    return validate(schema, data, where or str(path), error)


def load(path: str | os.PathLike, *, error: type[NegmergeError] = UsageError, what: str = "this file",
         where: str | None = None, limit: int = MAX_FILE_BYTES, register: bool = True) -> object:
    """The file at ``path`` strictly parsed, for readers that pick the schema from what it holds
    (then :func:`validate`). A regular file only (never a FIFO or device), of at most ``limit`` bytes
    (``what`` names the kind of file in that error), registered as an input of the operation unless
    ``register=False`` (the tool's own bookkeeping, which it replaces). Errors are ``error``, one
    line starting with ``where`` (the path, or e.g. ``--base-retain PATH``)."""
    where = where or str(path)
    try:
        raw = files.read_bytes(path, error=error, limit=limit, what=what, register=register)
    except NegmergeError as exc:
        raise error(f"{where}: {str(exc).removeprefix(f'{path}: ')}") from None
    return load_json(raw, f"{where}:", error)


def validate(schema: type[T] | Any, data: object, where: str, error: type[NegmergeError] = NegmergeError) -> T:
    """Parsed JSON ``data`` as ``schema``; ``error`` naming ``where`` and the field for anything else."""
    try:
        return _adapter(schema).validate_python(data, strict=True)
    except ValidationError as exc:
        raise error(f"{where}: {describe(exc)}") from None


@functools.lru_cache(maxsize=None)
def _adapter(schema) -> TypeAdapter:
    return TypeAdapter(schema)


# -- one line per failure ------------------------------------------------------------------------

_KINDS = {  # pydantic's error type -> what the field must be
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "dict_type": "a JSON object", "model_type": "a JSON object", "list_type": "a list",
    "none_required": "null", "finite_number": "a finite number",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def describe(exc: ValidationError) -> str:
    """The first failure of ``exc`` as ``field 'a.b[3]': <problem>`` (the whole document when the
    failure is at its top)."""
    first = exc.errors(include_url=False)[0]
    location, problem = list(first["loc"]), _problem(first)
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldProblem):
        location += cause.at
    if not location:
        kind = _KINDS.get(first["type"])
        return f"not {kind} (got {_shown(first['input'])})" if kind else problem
    if first["type"] == "missing":
        return f"field '{field_path(location)}' is missing"
    if first["type"] == "extra_forbidden":
        return f"unknown field '{field_path(location)}'"
    return f"field '{field_path(location)}': {problem}"


def field_path(location: list) -> str:
    """``['metrics', 'acc1']`` -> ``metrics.acc1``; ``['forget_indices', 3]`` -> ``forget_indices[3]``;
    keys that are not identifiers are quoted: ``rank_pattern['model.layers.0']``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{show(part)}]"
    return text


def _problem(error: dict) -> str:
    kind, ctx, got = error["type"], error.get("ctx", {}), _shown(error["input"])
    if kind in _KINDS:
        return f"expected {_KINDS[kind]}, got {got}"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {ctx[_BOUND_KEYS[kind]]:g}, got {got}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {got}"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"].replace("Input should be", "expected") + f", got {got}"


def _shown(value: object) -> str:
    """A value as JSON spells it where Python differs (true, null), else a short repr."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a JSON object" if value else "{}"
    return show(value)
