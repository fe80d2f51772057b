"""``inspect``: what a checkpoint holds (tensors, metadata, totals), and for task vectors how much
of each tensor is non-zero (what survived a NegMerge). A selection (``--include``/``--exclude``)
limits the tensors shown and every total to the selected ones."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from negmerge_cli.arithmetic.selection import EVERYTHING, TensorSelection
from negmerge_cli.checkpoint import hub
from negmerge_cli.checkpoint.format import DTYPE_CODES, count_nonzero, is_float
from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX
from negmerge_cli.checkpoint.zero_tensors import read_zero_tensors

_SLICE = 1 << 22


@dataclass
class TensorSummary:
    name: str
    dtype: str
    shape: list[int]
    numel: int
    nonzero: int | None = None

    @property
    def nonzero_fraction(self) -> float | None:
        if self.nonzero is None:
            return None
        return self.nonzero / self.numel if self.numel else 0.0


@dataclass
class CheckpointSummary:
    path: str
    files: list[str]
    metadata: dict[str, str]
    tensors: list[TensorSummary]
    is_task_vector: bool
    total_bytes: int  # of the files
    tensor_bytes: int  # of the (selected) tensors' data
    dtypes: dict[str, int] = field(default_factory=dict)
    zero_tensors: list[TensorSummary] = field(default_factory=list)  # omitted from the file as all-zero
    selection: TensorSelection = EVERYTHING

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nonzero_fraction(self) -> float | None:
        """Over the counted tensors and the omitted zero ones: the same for a vector written with
        or without its all-zero tensors."""
        counted = [t for t in self.tensors if t.nonzero is not None]
        if not counted:
            return None
        total = sum(t.numel for t in counted + self.zero_tensors)
        return sum(t.nonzero for t in counted) / total if total else 0.0

    def prefixes(self) -> list["PrefixSummary"]:
        """Totals per name prefix: the first dotted component (``visual``, ``transformer``...), or
        more components while every tensor shares them (``model.layers`` in LLM checkpoints)."""
        counting = any(t.nonzero is not None for t in self.tensors)
        omitted = [replace(t, nonzero=0 if counting else None) for t in self.zero_tensors]  # zeros, not unknowns
        everything = [*self.tensors, *omitted]
        depth = _prefix_depth([t.name for t in everything])
        groups: dict[str, PrefixSummary] = {}
        for tensor in everything:
            prefix = ".".join(tensor.name.split(".")[:depth])
            group = groups.setdefault(prefix, PrefixSummary(prefix))
            group.add(tensor)
        return list(groups.values())

    def to_json(self) -> dict:
        tensors = [{**asdict(t), "nonzero_fraction": t.nonzero_fraction} for t in self.tensors]
        return {
            "path": self.path, "files": self.files, "metadata": self.metadata,
            "is_task_vector": self.is_task_vector, "tensor_count": len(self.tensors),
            "numel": self.numel, "total_bytes": self.total_bytes, "tensor_bytes": self.tensor_bytes,
            "params_by_dtype": self.dtypes, "nonzero_fraction": self.nonzero_fraction,
            "prefixes": [p.to_json() for p in self.prefixes()], "tensors": tensors,
            "zero_tensors": [asdict(t) for t in self.zero_tensors],
            "include": list(self.selection.include), "exclude": list(self.selection.exclude),
        }


@dataclass
class PrefixSummary:
    """The tensors whose names start with ``prefix``: how many, their elements, and (when counted)
    their non-zero float elements."""

    prefix: str
    tensors: int = 0
    numel: int = 0
    counted: int = 0  # elements of the tensors whose non-zeros were counted
    nonzero: int | None = None
    only_itself: bool = True  # the prefix is the one tensor's whole name (no ``.*``)

    @property
    def pattern(self) -> str:
        return self.prefix if self.only_itself else self.prefix + ".*"

    def add(self, tensor: TensorSummary) -> None:
        self.only_itself = self.only_itself and tensor.name == self.prefix
        self.tensors += 1
        self.numel += tensor.numel
        if tensor.nonzero is not None:
            self.counted += tensor.numel
            self.nonzero = (self.nonzero or 0) + tensor.nonzero

    @property
    def nonzero_fraction(self) -> float | None:
        if self.nonzero is None:
            return None
        return self.nonzero / self.counted if self.counted else 0.0

    def to_json(self) -> dict:
        return {"prefix": self.pattern, "tensor_count": self.tensors, "numel": self.numel, "nonzero": self.nonzero,
                "nonzero_fraction": self.nonzero_fraction}


def _prefix_depth(names: list[str], most: int = 3) -> int:
    depth = 1
    while depth < most and len({".".join(n.split(".")[:depth]) for n in names}) == 1 and \
            any(n.count(".") >= depth for n in names):
        depth += 1
    return depth


def inspect_checkpoint(path: str | Path, count_nonzero: bool | None = None,
                       selection: TensorSelection = EVERYTHING) -> CheckpointSummary:
    """Summarise a checkpoint's selected tensors. ``count_nonzero`` defaults to True for task vectors
    (files whose metadata says ``negmerge.kind: task_vector``); counting reads the data, the rest
    reads headers."""
    with open_checkpoint(hub.resolve(path), digest=False) as checkpoint:
        is_vector = checkpoint.metadata.get(PREFIX + "kind") == "task_vector"
        count = is_vector if count_nonzero is None else count_nonzero
        zeros = read_zero_tensors(checkpoint)
        everything = [*checkpoint.names, *zeros]
        picked = set(selection.pick(everything, everything, f"tensor of {checkpoint.path}"))
        names = [n for n in checkpoint.names if n in picked]
        tensors = [_summarise(checkpoint, name, count) for name in names]
        omitted = [TensorSummary(z.name, DTYPE_CODES[z.dtype], list(z.shape), z.numel, 0)
                   for z in zeros.values() if z.name in picked]
        dtypes = Counter()
        for tensor in tensors:
            dtypes[tensor.dtype] += tensor.numel
        return CheckpointSummary(
            str(checkpoint.path), [str(f.path) for f in checkpoint.files], dict(checkpoint.metadata),
            tensors, is_vector, checkpoint.total_bytes, sum(checkpoint.entry(n).nbytes for n in names),
            dict(dtypes), omitted, selection,
        )


def _summarise(checkpoint: Checkpoint, name: str, count: bool) -> TensorSummary:
    entry = checkpoint.entry(name)
    summary = TensorSummary(name, entry.dtype_code, list(entry.shape), entry.numel)
    if count and is_float(entry.dtype):
        summary.nonzero = sum(
            count_nonzero(checkpoint.read(name, start, min(start + _SLICE, entry.numel)))
            for start in range(0, entry.numel, _SLICE)
        )
    return summary
