"""Checking SOURCE's tensors against the target OpenCLIP model, and completing them (no I/O).

:func:`check_source` is the one place a source value is trusted: each must be a dense CPU tensor
with values (not meta, sparse or nested), of the model's dtype class (floating point for a float
weight) in a dtype safetensors stores, in exactly the shape its part of the model needs (``(D, D)``
for a Q third of a ``(3D, D)`` input projection, ``(in, out)`` for a transposed projection). It runs
on the model's skeleton (no weights) before any arithmetic, so a ``torch.cat`` or transpose never
sees anything else. SOURCE must bring the image tower (``visual.*``) and nothing the model lacks.
Tensors SOURCE lacks (the text tower, logit scale; a projection transformers' ``CLIPVisionModel``
does not hold) come from the pretrained model when one is given (:func:`complete`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from negmerge_cli.checkpoint.format import DTYPE_CODES
from negmerge_cli.convert.layouts import THIRDS, TRANSPOSED, WHOLE, Part
from negmerge_cli.core.errors import CheckpointError

IMAGE_TOWER = "visual."


@dataclass
class Fitted:
    tensors: dict[str, torch.Tensor]  # in the model's state-dict order
    filled: list[str] = field(default_factory=list)  # names taken from the pretrained model


def check_source(values: dict[str, object], parts: dict[str, Part], expected: dict[str, torch.Tensor],
                 model_name: str, path: Path, completing: bool) -> None:
    """Every source value of ``parts`` against the model's ``expected`` tensors (a skeleton's are
    enough: only names, dtypes and shapes are read); ``completing``: the pretrained model supplies
    what SOURCE lacks."""
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: does not fit model {model_name}: {what}")

    unexpected = [source for source, part in parts.items() if part.target not in expected]
    if unexpected:
        name, origin = _described(unexpected[0], parts[unexpected[0]])
        raise fail(f"unexpected tensor '{name}'{origin}{_more(unexpected)}")
    if not any(part.target.startswith(IMAGE_TOWER) for part in parts.values()):
        raise fail("it holds no image-encoder tensors (visual.*)")
    for source, part in parts.items():
        problem = tensor_problem(values[source], expected[part.target], part.form)
        if problem is not None:
            name, origin = _described(source, part)
            raise fail(f"tensor '{name}' {problem}{origin}")
    _check_split_attention(values, parts, fail)
    held = {part.target for part in parts.values()}
    tower = [k for k in expected if k.startswith(IMAGE_TOWER) and k not in held]
    if tower and not completing:
        raise fail(f"missing tensor '{tower[0]}'{_more(tower)} (--pretrained can supply missing tensors)")


def tensor_problem(value: object, reference: torch.Tensor, form: str = WHOLE) -> str | None:
    """What makes ``value`` unfit to be ``form`` of the model's ``reference`` tensor, or None."""
    if type(value) not in (torch.Tensor, torch.nn.Parameter):
        return f"is a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else str(value.layout).removeprefix("torch.")
        return f"is a {layout} tensor, not a dense one"
    if value.device.type != "cpu":
        return f"is a {value.device.type} tensor, not one with values in the file"
    if _dtype_class(value.dtype) != _dtype_class(reference.dtype):
        return f"has dtype {_dtype_name(value.dtype)}, the model needs a {_dtype_class(reference.dtype)} tensor"
    if value.dtype not in DTYPE_CODES:
        return f"has dtype {_dtype_name(value.dtype)}, which safetensors cannot store"
    shape, needed = tuple(value.shape), part_shape(tuple(reference.shape), form)
    if shape != needed and not (form == WHOLE and {shape, needed} == {(), (1,)}):  # logit_scale: () or (1,)
        return f"has shape {shape}, the model needs {needed}"
    return None


def part_shape(shape: tuple[int, ...], form: str) -> tuple[int, ...]:
    """The shape of ``form`` of a tensor of ``shape``: a third of its rows, its transpose, or itself."""
    if form in THIRDS:
        return (shape[0] // 3, *shape[1:]) if shape else shape
    return tuple(reversed(shape)) if form == TRANSPOSED else shape


def _check_split_attention(values: dict[str, object], parts: dict[str, Part], fail) -> None:
    """A split input projection needs its Q, K and V rows, all of one dtype (torch.cat would
    silently promote)."""
    thirds: dict[str, dict[str, str]] = {}
    for source, part in parts.items():
        if part.form in THIRDS:
            thirds.setdefault(part.target, {})[part.form] = source
    for target, held in thirds.items():
        absent = [third for third in THIRDS if third not in held]
        if absent:
            raise fail(f"split attention: '{next(iter(held.values()))}' is part of '{target}', "
                       f"whose {absent[0]} rows the file lacks")
        dtypes = {values[source].dtype for source in held.values()}
        if len(dtypes) > 1:
            found = ", ".join(f"{held[third]} {_dtype_name(values[held[third]].dtype)}" for third in THIRDS)
            raise fail(f"split attention: the Q, K and V rows of '{target}' differ in dtype ({found})")


def complete(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
             pretrained: dict[str, torch.Tensor] | None) -> Fitted:
    """``tensors`` (checked, under the model's names) in the model's order, completed from
    ``pretrained`` if given."""
    if pretrained is None:
        return Fitted({k: tensors[k] for k in expected if k in tensors})
    missing = [k for k in expected if k not in tensors]
    return Fitted({k: tensors[k] if k in tensors else pretrained[k] for k in expected}, missing)


def _described(source: str, part: Part) -> tuple[str, str]:
    """How an error names a source tensor: the model's name when it is a whole tensor of the
    model, else its own name, plus what it is in the model (or in the file)."""
    if part.form == WHOLE:
        return part.target, "" if source == part.target else f" ('{source}' in the file)"
    what = "the transpose" if part.form == TRANSPOSED else f"the {part.form} rows"
    return source, f" ({what} of '{part.target}')"


def _dtype_class(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating-point"
    if dtype.is_complex:
        return "complex"
    return "boolean" if dtype == torch.bool else "integer"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""
