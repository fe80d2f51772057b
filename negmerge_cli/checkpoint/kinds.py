"""Model checkpoint or task vector: the kind of each input, checked against the role it plays.

Every file the tool writes records its kind in ``negmerge.kind``. A file from elsewhere has none,
but its kind is still known for sure in two cases: a PEFT LoRA adapter folder is a task vector, and
a Hugging Face model folder (``config.json`` beside the weights) is a checkpoint. Any other file of
unknown kind is accepted in every role: nothing in a plain state dict tells a checkpoint from a
task vector for sure (docs/files.md).

Every stage checks each input as soon as it is opened, before any output exists:
:func:`require_kind` for its kind, :func:`refuse_same_input` for an input that is another one again
(the same file, or a copy of its tensors), such as a vector that is the checkpoint itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch

from negmerge_cli.checkpoint.lora import is_adapter
from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import CHECKPOINT, KIND, TASK_VECTOR
from negmerge_cli.checkpoint.reader import INDEX_SUFFIX
from negmerge_cli.core.errors import CheckpointError, UsageError, option
from negmerge_cli.core.strict_json import show

_NAMES = {CHECKPOINT: "model checkpoint", TASK_VECTOR: "task vector"}
HF_CONFIG = "config.json"  # what makes a folder of weights a Hugging Face model
_PROBE = 4096  # elements of every tensor compared first: two different checkpoints differ there
_BLOCK = 1 << 22  # elements per read when whole tensors are compared


@dataclass(frozen=True)
class Role:
    """What an input is for: the kind it must be, and what to run instead. Hints name options as
    ``{base}``, spelled as the user spells them (``--base``, or ``base`` in Python) when raised."""

    kind: str
    hint: str  # when the input is of the other kind
    same_hint: str = ""  # when it is the input it is compared with (refuse_same_input)
    adapters: bool = False  # a LoRA adapter is welcome although it is a task vector


VECTOR_BASE = Role(CHECKPOINT, "{base} is the checkpoint the fine-tunes started from")
VECTOR_INPUT = Role(CHECKPOINT, "vector's inputs are fine-tuned checkpoints; "
                                "a task vector is merged or applied as it is",
                    "its task vector would be zero everywhere; give only the fine-tuned checkpoints", adapters=True)
MERGE_VECTOR = Role(TASK_VECTOR, "to merge fine-tuned checkpoints pass {base} BASE, "
                                 "or make vectors first with 'negmerge vector'")
MERGE_FINETUNED = Role(CHECKPOINT, "with {base} the inputs are fine-tuned checkpoints; "
                                   "leave out {base} to merge task vectors",
                       "its task vector would be zero everywhere (and NegMerge's result with it); "
                       "give only the fine-tuned checkpoints")
MERGE_BASE = Role(CHECKPOINT, "{base} is the checkpoint the fine-tunes started from; "
                              "leave it out to merge task vectors")
APPLY_BASE = Role(CHECKPOINT, "apply changes the checkpoint given as {base} by the task vector given as {vector} "
                              "(swapped?)")
NEGATION_VECTOR = "a task vector is a fine-tune minus its base: make one with 'negmerge vector'"
APPLY_VECTOR = Role(TASK_VECTOR, "make a task vector with 'negmerge vector' or 'negmerge merge' "
                                 "(or are {base} and {vector} swapped?)", NEGATION_VECTOR)
MODEL_WEIGHTS = Role(CHECKPOINT, "'negmerge apply' makes a checkpoint from a base and a vector")  # eval, finetune
EVAL_VECTOR = Role(TASK_VECTOR, "make one with 'negmerge vector' or 'negmerge merge'", NEGATION_VECTOR)
CONVERT_SOURCE = Role(CHECKPOINT, "convert reads a model's weights; a task vector is added with 'negmerge apply'")


class _Options(dict):
    def __missing__(self, name: str) -> str:
        return option(name)


def _fill(hint: str) -> str:
    return hint.format_map(_Options())


def kind_of(checkpoint: Checkpoint) -> tuple[str | None, str]:
    """The input's kind and how it is known; ``(None, "")`` when nothing says."""
    if is_adapter(checkpoint):
        return TASK_VECTOR, "a LoRA adapter folder"
    recorded = checkpoint.metadata.get(KIND)
    if recorded is not None:
        if recorded not in _NAMES:
            raise CheckpointError(f"{checkpoint.path}: metadata {KIND} is {show(recorded)}, "
                                  f"expected {CHECKPOINT!r} or {TASK_VECTOR!r}")
        return recorded, "its metadata says so"
    if _is_model_folder_weights(Path(checkpoint.path)):
        return CHECKPOINT, f"a Hugging Face model folder: {HF_CONFIG} beside its weights"
    return None, ""


def _is_model_folder_weights(path: Path) -> bool:
    """The weights of a folder holding ``config.json``: its index, or its only safetensors file (a
    folder of several loose files is no model folder, whatever else it holds)."""
    folder = path.parent
    if not (folder / HF_CONFIG).is_file():
        return False
    return path.name.endswith(INDEX_SUFFIX) or [p.name for p in folder.glob("*.safetensors")] == [path.name]


def require_kind(checkpoint: Checkpoint, role: Role) -> None:
    """Refuse an input whose known kind contradicts ``role``, with what to run instead."""
    kind, evidence = kind_of(checkpoint)
    if kind is None or kind == role.kind or (role.adapters and is_adapter(checkpoint)):
        return
    raise UsageError(f"{checkpoint.path}: is a {_NAMES[kind]}, not a {_NAMES[role.kind]} ({evidence}); "
                     f"{_fill(role.hint)}")


def refuse_same_input(first: Checkpoint, first_option: str, second: Checkpoint, role: Role) -> None:
    """Refuse ``second`` (playing ``role``) when it is ``first`` (given as ``first_option``) again:
    the same file (also through a link), or the same tensors, bytes for bytes (a copy, with or
    without metadata). Different checkpoints differ in the first elements of some tensor, so the
    comparison reads a few kilobytes per tensor unless the two are the same."""
    if _file_identities(first) & _file_identities(second):
        how = "is the same file as"
    elif same_tensors(first, second):
        how = "holds the same tensors as"
    else:
        return
    raise UsageError(f"{second.path}: {how} {option(first_option)} {first.path}; {_fill(role.same_hint)}")


def check_negation_inputs(checkpoint: str | os.PathLike, vector: str | os.PathLike,
                          checkpoint_option: str = "checkpoint") -> None:
    """``eval``'s search: the model a checkpoint, the vector a task vector, and not the model again."""
    with open_checkpoint(checkpoint, digest=False) as model, open_checkpoint(vector, digest=False) as tau:
        require_kind(model, MODEL_WEIGHTS)
        require_kind(tau, EVAL_VECTOR)
        refuse_same_input(model, checkpoint_option, tau, EVAL_VECTOR)


def same_tensors(a: Checkpoint, b: Checkpoint) -> bool:
    """Same tensor names, dtypes, shapes and bytes; the first elements of every tensor first."""
    names = a.names
    if sorted(names) != sorted(b.names):
        return False
    if any((a.entry(n).dtype, a.entry(n).shape) != (b.entry(n).dtype, b.entry(n).shape) for n in names):
        return False
    sizes = {n: a.entry(n).numel for n in names}
    probes = ((n, 0, min(size, _PROBE)) for n, size in sizes.items())
    blocks = ((n, start, min(start + _BLOCK, size)) for n, size in sizes.items() for start in range(0, size, _BLOCK))
    return all(_equal_range(a, b, *where) for where in chain(probes, blocks))


def _equal_range(a: Checkpoint, b: Checkpoint, name: str, start: int, stop: int) -> bool:
    # bytes, not values: NaN equals itself here, and -0.0 differs from 0.0
    first, second = a.read(name, start, stop), b.read(name, start, stop)
    return torch.equal(first.contiguous().view(torch.uint8), second.contiguous().view(torch.uint8))


def _file_identities(checkpoint: Checkpoint) -> set[tuple[int, int]]:
    identities = set()
    for file in checkpoint.files:
        try:
            status = os.stat(file.path)
        except OSError:
            continue
        identities.add((status.st_dev, status.st_ino))
    return identities
