"""The sweep: a grid of hyperparameters and the folder its fine-tunes are written into.

DIR/base.safetensors       the starting model (full state dict)
DIR/<point>.safetensors    one checkpoint per grid point, hyperparameters in its metadata
DIR/manifest.json          every finished (or running/failed) point: file, settings, Val accuracy
DIR/sweep.json             what the folder is a sweep of (model, weights, data, batch, seed mode,
                           frozen parameters); a run with other values is refused, so one folder
                           never mixes two sweeps
DIR/.records/<point>.json  one record per point, written atomically; the manifest is rebuilt from
                           them under a file lock, so concurrent jobs (``--point N``) lose nothing

A point is finished when its record says ``done`` and its checkpoint exists; re-running the same
command skips finished points. A run holds the folder (:meth:`SweepFolder.claim`) from its set-up
until it records its first point: one that fails before that leaves no trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import files, limits
from negmerge_cli.core.errors import OutputError, UsageError, option
from negmerge_cli.results import Metrics, PointRecord, SweepManifest

RECORDS = ".records"
LOCK = ".lock"
# The paper's k = 30 augmentations: RandAugment m in 1..10, n in 1..3.
PAPER_RANDAUG = tuple(f"rand-m{m}-n{n}-mstd0.5" for m in range(1, 11) for n in range(1, 4))
NO_AUGMENTATION = "none"
# How a point's training seed follows from its --seed value: its own (derived from the seed and the
# point, as the released runs each had their own) or the value itself for every point.
PER_POINT, SHARED = "per-point", "shared"
SEED_MODES = (PER_POINT, SHARED)
SEED_LIMIT = limits.TRAIN_SEED.high  # seeds (and seed + torchrun rank) stay valid for torch, NumPy and random


@dataclass
class Grid:
    """Values per hyperparameter; the sweep is their product (in this field order). ``lr`` and ``wd``
    None: the model family's default (negmerge_cli.training.family.with_defaults)."""

    lr: Optional[Sequence[float]] = None
    epochs: Sequence[int] = ()
    steps: Sequence[int] = ()
    wd: Optional[Sequence[float]] = None
    label_smoothing: Sequence[float] = (0.0,)
    seed: Sequence[int] = (0,)
    randaug: Sequence[str] = (NO_AUGMENTATION,)


@dataclass(frozen=True)
class GridPoint:
    index: int
    lr: float
    wd: float
    label_smoothing: float
    seed: int
    randaug: str
    epochs: Optional[int] = None
    steps: Optional[int] = None
    train_seed: Optional[int] = None  # the seed training uses (set by expand_grid, see point_seed)

    @property
    def name(self) -> str:
        """Stable file stem, e.g. ``lr1e-05_ep2_wd0.1_ls0_seed0_rand-m1-n1-mstd0.5``."""
        length = f"ep{self.epochs}" if self.steps is None else f"st{self.steps}"
        augment = "noaug" if self.randaug == NO_AUGMENTATION else self.randaug
        return f"lr{self.lr:g}_{length}_wd{self.wd:g}_ls{self.label_smoothing:g}_seed{self.seed}_{augment}"

    def hyperparameters(self) -> dict:
        values = asdict(self)
        values.pop("index")
        return {k: v for k, v in values.items() if v is not None}


def check_grid(grid: Grid) -> None:
    """Every value finite and in range, every option with at least one value."""
    if grid.epochs and grid.steps:
        raise UsageError(f"give {option('epochs')} or {option('steps')}, not both")
    for name in ("lr", "wd", "label_smoothing", "seed", "randaug"):
        if not getattr(grid, name):
            raise UsageError(f"the grid has no points: {option(name)} has no values")
    limits.check_fields("finetune", grid)  # every value finite and in range, before anything is written


def select_points(points: list[GridPoint], wanted: Optional[Sequence[int]]) -> list[GridPoint]:
    """The grid points ``--point`` names (all of them when it is not given)."""
    if wanted is None:
        return points
    bad = [i for i in wanted if not 0 <= i < len(points)]
    if bad:
        raise UsageError(f"{option('point')} {bad[0]} is out of range: the grid has {len(points)} points "
                         f"(0..{len(points) - 1})")
    return [points[i] for i in wanted]


def expand_grid(grid: Grid, default_epochs=None, seed_mode: str = PER_POINT) -> list[GridPoint]:
    """All grid points. ``default_epochs(randaug) -> int|None`` fills in epochs when neither is given;
    ``seed_mode`` says how each point's ``train_seed`` follows from its ``seed``."""
    check_grid(grid)
    check_seed_mode(seed_mode)
    lengths = [("steps", s) for s in grid.steps] or [("epochs", e) for e in grid.epochs] or [("epochs", None)]
    points = []
    for lr, (kind, length), wd, ls, seed, randaug in itertools.product(
        grid.lr, lengths, grid.wd, grid.label_smoothing, grid.seed, grid.randaug
    ):
        if kind == "epochs" and length is None:
            length = default_epochs(randaug) if default_epochs else None
            if length is None:
                raise UsageError(f"give {option('epochs')} or {option('steps')} (this dataset has no paper default)")
        point = GridPoint(len(points), lr, wd, ls, seed, randaug, **{kind: length})
        points.append(replace(point, train_seed=point_seed(point.name) if seed_mode == PER_POINT else seed))
    return points


def check_seed_mode(seed_mode: str) -> None:
    if seed_mode not in SEED_MODES:
        raise UsageError(f"{option('seed_mode')} {seed_mode!r}: must be one of {', '.join(SEED_MODES)}")


def point_seed(name: str) -> int:
    """A point's own seed: the first 4 bytes of SHA-256 of its name (which holds its ``--seed`` value
    and every other hyperparameter), big-endian, top bit cleared. It depends on the point alone, not
    on its index or the rest of the grid, so a ``--point N`` job trains exactly as the whole sweep."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % SEED_LIMIT


def normalise_randaug(values: Sequence[str]) -> list[str]:
    """``paper`` -> the 30 strings of the paper; ``none``/empty -> no RandAugment."""
    out = []
    for value in values:
        value = value.strip()
        if value == "paper":
            out += PAPER_RANDAUG
        elif value.lower() in ("", "none", "noaug"):
            out.append(NO_AUGMENTATION)
        else:
            out.append(value)
    return list(dict.fromkeys(out))


# --- the sweep folder ---------------------------------------------------------------------------


# The files a run writes into DIR before its first point: what an undone set-up removes.
SETUP_FILES = ("sweep.json", "base.safetensors", "manifest.json")


@dataclass
class SweepFolder:
    root: Path
    identity: dict = field(default_factory=dict)
    _lock_depth: int = field(default=0, init=False, repr=False, compare=False)
    _setup: Optional[contextlib.ExitStack] = field(default=None, init=False, repr=False, compare=False)

    @property
    def base(self) -> Path:
        return self.root / "base.safetensors"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def checkpoint(self, point: GridPoint) -> Path:
        return self.root / f"{point.name}.safetensors"

    def record_path(self, name: str) -> Path:
        return self.root / RECORDS / f"{name}.json"

    @contextlib.contextmanager
    def locked(self):
        """An exclusive flock on DIR/.lock (DIR made if missing): serialises sweep.json, base and
        manifest updates. Re-entrant: a run holding it through its set-up calls methods that take it."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with files.locked(self.root / LOCK):
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    @contextlib.contextmanager
    def claim(self):
        """Hold the folder for one run, from its set-up (identity, base, base metrics) until it
        records its first point: made if missing and locked, so other jobs wait and then find it
        set up or absent, never half made. A run that fails before its first record is undone: the
        set-up files it wrote are removed, and the folder (with any parents) when this run made it;
        a folder that existed is left as it was. A run that finds the folder set up has nothing to
        undo and lets go at once (jobs of one sweep set up in parallel, not one after another)."""
        made = _missing_folders(self.root)
        had_lock = os.path.lexists(self.root / LOCK)
        present = set(SETUP_FILES)
        self._setup = contextlib.ExitStack()
        try:
            self._setup.enter_context(self.locked())
            present = set(os.listdir(self.root))  # under the lock: a set-up file not here yet is this run's
            if {"sweep.json", self.base.name} <= present and self.base_metrics() is not None:
                self._settle()
            yield self
        except BaseException:
            if self._setup is not None:
                self._undo_setup([name for name in SETUP_FILES if name not in present], had_lock, made)
            raise
        finally:
            self._settle()

    def _settle(self) -> None:
        """The run's set-up is over (its first point is recorded): release the claim's lock."""
        if self._setup is not None:
            setup, self._setup = self._setup, None
            setup.close()

    def _undo_setup(self, written: list[str], had_lock: bool, made: list[Path]) -> None:
        for name in written:
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
        if not had_lock:
            with contextlib.suppress(OSError):
                (self.root / LOCK).unlink()  # a job waiting on it makes a new one (files.locked)
        self._settle()
        for folder in made:  # innermost first; only while empty (another job may have begun)
            with contextlib.suppress(OSError):
                folder.rmdir()

    def check_identity(self) -> None:
        """Refuse a folder that holds another sweep; claim an empty one (call under the lock)."""
        path = self.root / "sweep.json"
        if path.exists():
            stored = _sweep_file(path).identity
            for key in {**stored, **self.identity}:
                there, here = (i.get(key, IDENTITY_DEFAULTS.get(key)) for i in (stored, self.identity))
                if there != here:
                    raise OutputError(
                        f"{self.root}: holds a different sweep ({key} is {there!r} there, "
                        f"{here!r} here); use another output folder"
                    )
            return
        if self.root.exists() and any(p.suffix == ".safetensors" for p in self.root.iterdir()):
            raise OutputError(f"{self.root}: holds safetensors files but no sweep.json; use an empty output folder")
        files.write_json(path, {"identity": self.identity}, owned=True)

    def finished(self, point: GridPoint) -> bool:
        path = self.record_path(point.name)
        return path.exists() and _record(path).status == "done" and self.checkpoint(point).exists()

    def write_record(self, record: PointRecord) -> None:
        files.write_json(self.record_path(record.name), record.to_json(), owned=True)
        self.rebuild_manifest()
        self._settle()  # the first record ends the claim's set-up: the folder stays, other jobs go on

    def set_base_metrics(self, metrics: Metrics) -> None:
        with self.locked():
            identity = _sweep_file(self.root / "sweep.json").identity
            base = {"file": self.base.name, "val": metrics.to_json()}
            files.write_json(self.root / "sweep.json", {"identity": identity, "base": base}, owned=True)
        self.rebuild_manifest()

    def base_metrics(self) -> Optional[Metrics]:
        val = _sweep_file(self.root / "sweep.json").base.val
        return val.build() if val else None

    def rebuild_manifest(self) -> SweepManifest:
        with self.locked():
            sweep = _sweep_file(self.root / "sweep.json")
            records = sorted((_record(p) for p in (self.root / RECORDS).glob("*.json")), key=lambda r: (r.index, r.name))
            val = sweep.base.val.build() if sweep.base.val else None
            manifest = SweepManifest(dict(sweep.identity), self.base.name, val, records)
            files.write_json(self.manifest, manifest.to_json(), owned=True)
        return manifest


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, innermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    return missing


def read_manifest(folder: str | Path) -> SweepManifest:
    """The manifest of a sweep folder (as ``finetune`` left it)."""
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise OutputError(f"{path}: no such file (is {folder} a finetune sweep folder?)")
    from negmerge_cli.results.files import ManifestFile

    return _read_json(path, ManifestFile).build()


# What an identity key means when a sweep.json lacks it: sweeps written before the key existed
# trained with one seed for all points and froze nothing.
IDENTITY_DEFAULTS = {"crop_scale": 0.08, "hflip": 0.5, "seed_mode": SHARED, "freeze": []}


def identity_of(model: str, pretrained: Optional[str], data: str, batch_size: int, warmup_steps: int,
                templates: Optional[Path], classnames: Optional[Path], crop_scale: float = 0.08,
                hflip: float = 0.5, seed_mode: str = PER_POINT, freeze: Sequence[str] = (), *,
                quick_gelu: bool = False, precision: str = "fp32") -> dict:
    identity = {
        "model": model,
        "pretrained": _describe_weights(pretrained),
        "quick_gelu": quick_gelu,
        "precision": precision,
        "data": data,
        "batch_size": batch_size,
        "warmup_steps": warmup_steps,
        "templates": _file_digest(templates),
        "classnames": _file_digest(classnames),
        "seed_mode": seed_mode,
        "freeze": sorted(set(freeze)),  # the same parameters however the globs are ordered
    }
    if (crop_scale, hflip) != (0.08, 0.5):  # recorded only when changed: older sweeps stay valid
        identity.update(crop_scale=crop_scale, hflip=hflip)
    return identity


def _describe_weights(pretrained: Optional[str]) -> Optional[str]:
    if pretrained and Path(pretrained).is_file():
        path = Path(pretrained).resolve()
        return f"{path} ({path.stat().st_size} bytes)"
    return pretrained


def _file_digest(path: Optional[Path]) -> Optional[str]:
    if not path:
        return None
    return hashlib.sha256(files.read_bytes(path, error=UsageError, limit=_MAX_JSON_BYTES,
                                           what="a --templates or --classnames file")).hexdigest()


_MAX_JSON_BYTES = 64 * 2**20  # a sweep's JSON files are small; a huge one is not ours
_FIX = "remove it or use another output folder"


def _sweep_file(path: Path):
    """``sweep.json`` (its defaults when absent)."""
    from negmerge_cli.results.files import SweepFile

    return _read_json(path, SweepFile) if os.path.lexists(path) else SweepFile()


def _record(path: Path) -> PointRecord:
    from negmerge_cli.results.files import PointRecordFile

    return _read_json(path, PointRecordFile).build()


def _read_json(path: Path, schema):
    """One of the sweep's own JSON files as ``schema`` (negmerge_cli.core.schema: a regular file of
    strict JSON, every field checked); anything else is one line naming the file and the field."""
    from negmerge_cli.core import schema as schemas

    try:
        return schemas.read(path, schema, error=OutputError, what="a sweep file", limit=_MAX_JSON_BYTES,
                            register=False)
    except OutputError as error:
        raise OutputError(f"{error}; {_FIX}") from None
