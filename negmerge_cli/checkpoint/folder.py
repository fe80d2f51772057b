"""Output folders that are complete models: ``-o DIR/`` on ``merge`` and ``apply``.

When the output is a folder (an existing one, or a path ending with ``/``), the weights are written
in the base's layout (its file name; shards named as transformers names them, plus the index, when
the base is sharded or ``shard_size`` is given), the base folder's other files are copied next to
them, and a model card (``README.md``) is written, so ``from_pretrained(DIR)`` works as is.

The base's other files ("companions") are the regular files directly in the base folder except:
weights in any format (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.msgpack``,
``*.h5``, ``*.onnx``, ``*.gguf``) and their indexes (``*.index.json``), hidden files (``.gitattributes``,
``.cache``), subfolders, and the base's ``README.md`` (it describes the base, not the result; ours
replaces it). They are copied only when the base is given as a folder or as its index. A symlink
is followed only within the base folder (or, for a Hugging Face cache snapshot, into that repository's
``blobs/``); FIFOs and devices are refused (:func:`files.open_regular`).

Every file goes through :mod:`negmerge_cli.core.files`: targets are checked before any work (existing
files need ``force``; no target may be an input), and the copies, the weights and the card are
renamed into place together at the end, or none of them. A folder that already holds other weights
is refused where they would be what transformers (or this tool) loads from it afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from negmerge_cli.checkpoint import card as model_card
from negmerge_cli.checkpoint.hub_cache import origin
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.reader import INDEX_SUFFIX, MODEL_CONFIG, configured_weights, folder_weights
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError, OutputError, option, switch
from negmerge_cli.core.invocation import command_line
from negmerge_cli.core.output import output

if TYPE_CHECKING:
    from negmerge_cli.results.stream import StreamResult

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".gguf",
                   ".index.json")
MODEL_CARD = "README.md"
DEFAULT_WEIGHTS = "model.safetensors"  # a folder output with no base (or a lone-file base) to take the name from
LOADER_WEIGHTS = (DEFAULT_WEIGHTS, "open_clip_model.safetensors")  # names a lone-file base lends its output
_COPY_BLOCK = 1 << 20


def is_folder_target(output: str | os.PathLike) -> bool:
    """Whether ``output`` names a folder: an existing one, or a path ending with a separator."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)


@dataclass
class OutputPlan:
    """Where a stage's result goes: one weights file (or its shards), and for a folder, the rest."""

    weights: Path  # the file the writer writes (with shards, the name they are derived from)
    shard_bytes: int | None
    folder: Path | None = None  # the output folder, when the output is one
    companions: list[Path] = field(default_factory=list)  # the base's files to copy
    card: dict | None = None  # the model card's front matter values, or None for no card
    force: bool = False

    def targets(self) -> list[Path]:
        """The files besides the weights this plan writes."""
        card = [self.folder / MODEL_CARD] if self.card is not None else []
        return [self.folder / source.name for source in self.companions] + card

    def write(self, stream: Callable[[Path, int | None], "StreamResult"]) -> "StreamResult":
        """Copy the companions, stream the weights (``stream(weights, shard_bytes)`` returns a
        StreamResult), write the card; everything renamed into place together."""
        with files.deferred_commits():
            copied = [_copy(source, self.folder / source.name, self.force) for source in self.companions]
            result = stream(self.weights, self.shard_bytes)
            if self.card is not None:
                result.outputs.append(write_card(self.folder, result.metadata, force=self.force, **self.card))
        if copied:
            output().log(f"{self.folder}: copied {len(copied)} files from the base ({', '.join(p.name for p in copied)})")
        return result


def write_card(folder: Path, metadata: dict[str, str], *, base_model: str | None, library_name: str | None,
               force: bool) -> Path:
    """``folder/README.md``, the model card of weights whose provenance is ``metadata``."""
    card = model_card.render(metadata, title=folder.name, base_model=base_model, library_name=library_name,
                             command_line=command_line())
    return files.write_text(folder / MODEL_CARD, card, force=force)


def plan_output(output: str | os.PathLike, options, base: str | os.PathLike | None = None,
                base_checkpoint: Checkpoint | None = None) -> OutputPlan:
    """The output plan for ``output`` given ``options`` (a StreamOptions) and the base, if any.

    Checks every target now, before any work: an existing file needs ``force``, none may be an input."""
    if not is_folder_target(output):
        return OutputPlan(Path(output), options.shard_bytes)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    base_folder = _base_folder(Path(base)) if base is not None else None
    name, shard_bytes = _weights_layout(base_checkpoint, options.shard_bytes, lone_file=base_folder is None)
    companions = _companions(base_folder) if base_folder is not None and options.copy_files else []
    card = _card_fields(base, base_folder) if options.model_card else None
    plan = OutputPlan(folder / name, shard_bytes, folder, companions, card, options.force)
    check_read_back(folder, name, shard_bytes is not None, companions)
    for source in companions:
        files.register_input(source)
    for target in plan.targets():
        files.check_target(target, force=options.force)
    return plan


def check_read_back(folder: Path, weights: str, sharded: bool, companions: Sequence[Path] = ()) -> None:
    """The finished folder must be read (by transformers, and by this tool: the same rule,
    :func:`reader.folder_weights`) from the weights written now: a weights file an existing folder
    already holds, or a ``config.json`` naming another file, must not win over them."""
    try:
        existing = set(os.listdir(folder)) if folder.is_dir() else set()
    except OSError as exc:
        raise OutputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    names = existing | {source.name for source in companions}
    config = next((source for source in companions if source.name == MODEL_CONFIG), None)
    if config is None and MODEL_CONFIG in existing:
        config = folder / MODEL_CONFIG  # stays as it is
    configured = configured_weights(config) if config is not None else None
    for written in [weights, *([weights.removesuffix(".safetensors") + INDEX_SUFFIX] if sharded else [])]:
        try:
            chosen = folder_weights(folder, names | {written}, configured)
        except CheckpointError:
            others = sorted(n for n in existing - {written} if n.endswith((".safetensors", INDEX_SUFFIX)))
            raise OutputError(f"{folder}: already holds {', '.join(others)}, which would leave it ambiguous beside "
                              f"the {written} written now; remove them or write to another folder") from None
        if chosen != written:
            why = f"its {MODEL_CONFIG} names {chosen}" if chosen == configured else f"it already holds {chosen}"
            raise OutputError(f"{folder}: {why}, which transformers (and negmerge) would load instead of the "
                              f"{written} written now; remove it or write to another folder")


def _weights_layout(base: Checkpoint | None, shard_bytes: int | None, lone_file: bool = False) -> tuple[str, int | None]:
    """The base's weights file name, and the shard size: the one asked for, else the base's
    largest shard when it is sharded (so the output has about as many shards), else none.

    A base given as a lone file (an OpenCLIP ``sweep/base.safetensors``) lends its name only when
    it is a loader's own (``model.safetensors``, ``open_clip_model.safetensors``): the result is
    not the base, so ``DIR/base.safetensors`` would say the wrong thing; ``model.safetensors`` then."""
    if base is None:
        return DEFAULT_WEIGHTS, shard_bytes
    name = base.path.name
    if lone_file and name not in LOADER_WEIGHTS:
        name = DEFAULT_WEIGHTS
    if not name.endswith(INDEX_SUFFIX):
        return name, shard_bytes
    largest = max(sum(entry.nbytes for entry in f.header.tensors.values()) for f in base.files)
    return name.removesuffix(INDEX_SUFFIX) + ".safetensors", shard_bytes or max(largest, 1)


def _base_folder(base: Path) -> Path | None:
    """The model folder the base came from: given as a folder, or as a sharded checkpoint's index.
    A lone weights file says nothing about the files beside it, so nothing is copied then."""
    if base.is_dir():
        return base
    return base.parent if base.name.endswith(INDEX_SUFFIX) else None


def _companions(folder: Path) -> list[Path]:
    picked = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name == MODEL_CARD or is_weight_file(entry.name) or entry.is_dir():
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            _check_link(folder, path)
        picked.append(path)
    return picked


def _check_link(folder: Path, link: Path) -> None:
    """A symlink may point within the base folder, or from a Hugging Face cache snapshot
    (``models--ORG--NAME/snapshots/REV/``) into that repository's ``blobs/``; nowhere else."""
    real_folder = folder.resolve()
    allowed = [real_folder]
    if real_folder.parent.name == "snapshots":
        allowed.append(real_folder.parent.parent / "blobs")
    target = link.resolve()
    if not any(target.is_relative_to(place) for place in allowed):
        no_copy = switch("no_copy_files") if option("no_copy_files").startswith("--") else "copy_files=False"
        raise CheckpointError(f"{link}: a symlink out of the base folder (to {target}); not copied "
                              f"(copy it by hand and pass {no_copy})")


def _copy(source: Path, target: Path, force: bool) -> Path:
    fd = files.open_regular(source, error=CheckpointError)
    with os.fdopen(fd, "rb") as handle, files.PendingFile(target, force=force) as pending:
        while block := handle.read(_COPY_BLOCK):
            pending.write(block)
    return target


def _card_fields(base: str | os.PathLike | None, base_folder: Path | None) -> dict:
    library = "transformers" if base_folder is not None and (base_folder / "config.json").is_file() else None
    return {"base_model": _base_model_name(base) if base is not None else None, "library_name": library}


def _base_model_name(base: str | os.PathLike) -> str:
    """The base's Hugging Face repository id (``ORG/NAME``: named by id, or a hub-cache snapshot),
    else its folder name (or file name without its suffixes): the Hub's ``base_model`` field, for
    the user to check."""
    real = Path(base).resolve()
    hub = origin(base, [Path(base)]) or origin(None, [real])
    if hub:
        return hub["repo_id"]
    folder = real if real.is_dir() else real.parent if real.name.endswith(INDEX_SUFFIX) else None
    return real.name.removesuffix(".safetensors") if folder is None else folder.name
