"""What a merge method is, and the registry that names them.

A method sees one chunk of one tensor at a time: the matching slices of the k task vectors arrive
as an iterator, one input at a time, so methods that keep running accumulators use memory that
does not grow with k. Methods that must see all k slices together (``holds_all_inputs``) get
smaller chunks instead, so the memory budget still holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

from negmerge_cli.core import limits
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.lazy import torch


def _no_check(accumulator: "torch.Tensor") -> None:
    pass


@dataclass(frozen=True)
class Chunk:
    """One flat slice ``[start, stop)`` of the tensor called ``name``, merged over ``count`` inputs.

    ``verify_sum``: for methods that ``sum_every_input``, the check of the running sum (NaN or Inf
    in any input, named by file and tensor); a no-op when non-finite values are allowed."""

    name: str
    start: int
    stop: int
    count: int
    weights: tuple[float, ...] | None = None
    verify_sum: Callable[["torch.Tensor"], None] = _no_check


@dataclass(frozen=True)
class Param:
    """A typed method parameter, exposed on the CLI as ``--<name with dashes>``; its range is
    ``merge``'s entry in :data:`negmerge_cli.core.limits.LIMITS` (the table of every numeric option)."""

    name: str
    type: type
    default: object
    help: str

    @property
    def requirement(self) -> str:
        from negmerge_cli.core import limits

        return limits.LIMITS["merge"][self.name].requirement


# Tensors read lazily for one tensor of one input: yields its task-vector slices in order.
TauReader = Callable[[int], Iterator["torch.Tensor"]]


class MergeMethod(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    formula: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    uses_weights: ClassVar[bool] = False
    holds_all_inputs: ClassVar[bool] = False
    state_buffers: ClassVar[int] = 2  # float buffers per element while merging a chunk
    # True: every element of every input is added (times a finite weight) into one running sum,
    # which the method passes to ``chunk.verify_sum`` before anything masks it. A NaN or Inf in an
    # input then shows in the sum, so one check per chunk replaces one check per input.
    sums_every_input: ClassVar[bool] = False

    def __init__(self, **values: object):
        known = {p.name: p for p in self.params}
        for key in values:
            if key not in known:
                raise UsageError(f"method '{self.name}' takes no option {option(key)}")
        for param in self.params:
            value = limits.check("merge", param.name, values.get(param.name, param.default))
            setattr(self, param.name, param.type(value))  # an int as a float; never a float truncated

    @property
    def settings(self) -> dict[str, object]:
        return {p.name: getattr(self, p.name) for p in self.params}

    def prepare(self, tensor: str, numel: int, count: int, read_taus: TauReader) -> None:
        """Hook run once per tensor before its chunks (e.g. per-tensor thresholds)."""

    @abstractmethod
    def merge_chunk(self, chunk: Chunk, taus: Iterator[torch.Tensor]) -> torch.Tensor:
        """Merge the slices of the k task vectors (arriving one input at a time) into one slice.

        The yielded tensors belong to the method: it may modify them in place.
        """


REGISTRY: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    REGISTRY[cls.name] = cls
    return cls


def create_method(name: str, **values: object) -> MergeMethod:
    """Instantiate a registered method with validated parameters (unset ones take defaults).
    Names are matched without regard to case (``TIES`` is ``ties``)."""
    found = lookup(name)
    return found(**{k: v for k, v in values.items() if v is not None})


def lookup(name: str) -> type[MergeMethod]:
    """The registered method called ``name``, in any case; UsageError listing the methods."""
    found = REGISTRY.get(name) or REGISTRY.get(name.strip().lower())
    if found is None:
        raise UsageError(f"{option('method')} {name}: unknown method; choose from {', '.join(sorted(REGISTRY))}")
    return found


def uniform_or(weights: tuple[float, ...] | None, count: int) -> tuple[float, ...]:
    return weights if weights is not None else (1.0,) * count
