"""``finetune``: a hyperparameter sweep of image-encoder fine-tunes written into one folder.

DIR/base.safetensors       the starting model (full OpenCLIP state dict)
DIR/<point>.safetensors    one checkpoint per grid point, hyperparameters in its metadata
DIR/manifest.json          every finished (or running/failed) point: file, settings, Val accuracy
DIR/sweep.json             what the folder is a sweep of (model, weights, data, batch); a run with
                           other values is refused, so one folder never mixes two sweeps
DIR/.records/<point>.json  one record per point, written atomically; the manifest is rebuilt from
                           them under a file lock, so concurrent jobs (``--point N``) lose nothing

A point is finished when its record says ``done`` and its checkpoint exists; re-running the same
command skips finished points. Under torchrun, rank 0 does all file work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from negmerge_cli.clip.progress import make_readable
from negmerge_cli.errors import OutputError, UsageError

RECORDS = ".records"
LOCK = ".lock"
# The paper's k = 30 augmentations: RandAugment m in 1..10, n in 1..3.
PAPER_RANDAUG = tuple(f"rand-m{m}-n{n}-mstd0.5" for m in range(1, 11) for n in range(1, 4))
NO_AUGMENTATION = "none"


@dataclass
class Grid:
    """Values per hyperparameter; the sweep is their product (in this field order)."""

    lr: Sequence[float] = (1e-5,)
    epochs: Sequence[int] = ()
    steps: Sequence[int] = ()
    wd: Sequence[float] = (0.1,)
    label_smoothing: Sequence[float] = (0.0,)
    seed: Sequence[int] = (0,)
    randaug: Sequence[str] = (NO_AUGMENTATION,)


@dataclass(frozen=True)
class Point:
    index: int
    lr: float
    wd: float
    label_smoothing: float
    seed: int
    randaug: str
    epochs: Optional[int] = None
    steps: Optional[int] = None

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


def expand_grid(grid: Grid, default_epochs=None) -> list[Point]:
    """All grid points. ``default_epochs(randaug) -> int|None`` fills in epochs when neither is given."""
    if grid.epochs and grid.steps:
        raise UsageError("give --epochs or --steps, not both")
    for option, values in (("--lr", grid.lr), ("--wd", grid.wd), ("--label-smoothing", grid.label_smoothing),
                           ("--seed", grid.seed), ("--randaug", grid.randaug)):
        if not values:
            raise UsageError(f"the grid has no points: {option} has no values")
    for option, values in (("--epochs", grid.epochs), ("--steps", grid.steps)):
        if any(v <= 0 for v in values):
            raise UsageError(f"{option} values must be positive (got {', '.join(map(str, values))})")
    if any(v <= 0 for v in grid.lr):
        raise UsageError("--lr values must be positive")
    lengths = [("steps", s) for s in grid.steps] or [("epochs", e) for e in grid.epochs] or [("epochs", None)]
    points = []
    for lr, (kind, length), wd, ls, seed, randaug in itertools.product(
        grid.lr, lengths, grid.wd, grid.label_smoothing, grid.seed, grid.randaug
    ):
        if kind == "epochs" and length is None:
            length = default_epochs(randaug) if default_epochs else None
            if length is None:
                raise UsageError("give --epochs or --steps (this dataset has no paper default)")
        points.append(Point(len(points), lr, wd, ls, seed, randaug, **{kind: length}))
    return points


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


@dataclass
class SweepFolder:
    root: Path
    identity: dict = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.root / "base.safetensors"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def checkpoint(self, point: Point) -> Path:
        return self.root / f"{point.name}.safetensors"

    def record_path(self, point: Point) -> Path:
        return self.root / RECORDS / f"{point.name}.json"

    @contextlib.contextmanager
    def locked(self):
        """An exclusive flock on DIR/.lock: serialises sweep.json, base and manifest updates."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def check_identity(self) -> None:
        """Refuse a folder that holds another sweep; claim an empty one (call under the lock)."""
        path = self.root / "sweep.json"
        if path.exists():
            stored = _read_json(path).get("identity", {})
            for key, value in self.identity.items():
                if stored.get(key) != value:
                    raise OutputError(
                        f"{self.root}: holds a different sweep ({key} is {stored.get(key)!r} there, "
                        f"{value!r} here); use another -o folder"
                    )
            return
        if self.root.exists() and any(p.suffix == ".safetensors" for p in self.root.iterdir()):
            raise OutputError(f"{self.root}: holds safetensors files but no sweep.json; use an empty -o folder")
        write_json(path, {"identity": self.identity})

    def finished(self, point: Point) -> bool:
        path = self.record_path(point)
        return path.exists() and _read_json(path).get("status") == "done" and self.checkpoint(point).exists()

    def write_record(self, point: Point, record: dict) -> None:
        write_json(self.record_path(point), {"index": point.index, "name": point.name, **record})
        self.rebuild_manifest()

    def set_base_metrics(self, metrics: dict) -> None:
        with self.locked():
            data = _read_json(self.root / "sweep.json")
            data["base"] = {"file": self.base.name, "val": metrics}
            write_json(self.root / "sweep.json", data)
        self.rebuild_manifest()

    def base_metrics(self) -> Optional[dict]:
        return _read_json(self.root / "sweep.json").get("base", {}).get("val")

    def rebuild_manifest(self) -> dict:
        with self.locked():
            sweep = _read_json(self.root / "sweep.json")
            records = sorted((_read_json(p) for p in (self.root / RECORDS).glob("*.json")),
                             key=lambda r: (r.get("index", 0), r.get("name", "")))
            manifest = {"identity": sweep.get("identity", {}), "base": sweep.get("base", {"file": self.base.name}),
                        "points": records}
            write_json(self.manifest, manifest)
        return manifest


def identity_of(model: str, pretrained: Optional[str], data: str, batch_size: int, warmup_steps: int,
                templates: Optional[Path], classnames: Optional[Path], crop_scale: float = 0.08,
                hflip: float = 0.5) -> dict:
    identity = {
        "model": model,
        "pretrained": _describe_weights(pretrained),
        "data": data,
        "batch_size": batch_size,
        "warmup_steps": warmup_steps,
        "templates": _file_digest(templates),
        "classnames": _file_digest(classnames),
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
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def write_json(path: Path, data) -> None:
    """Atomic: a temporary file in the same folder, fsynced, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        make_readable(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path}: not valid JSON ({exc}); remove it or use another -o folder") from None


# --- the stage ----------------------------------------------------------------------------------


@dataclass
class FinetuneOptions:
    model: str
    data: str
    output: Path
    pretrained: Optional[str] = None
    grid: Grid = field(default_factory=Grid)
    batch_size: int = 128
    accum_steps: int = 1
    warmup_steps: int = 500
    workers: int = 2
    point: Optional[Sequence[int]] = None  # run only these grid indices
    templates: Optional[Path] = None
    classnames: Optional[Path] = None
    device: str = "auto"
    eval_batch_size: int = 256
    cache_memory: str = "4GiB"
    crop_scale: float = 0.08  # RandAugment runs: smallest random-resized-crop area (timm's default)
    hflip: float = 0.5  # RandAugment runs: horizontal flip probability (timm's default)
    quiet: bool = False


def plan(options: FinetuneOptions) -> list[Point]:
    """The grid points this call would run (after --point selection); validates the options."""
    from negmerge_cli.clip import datasets, models

    if not 0 < options.crop_scale <= 1:
        raise UsageError(f"--crop-scale {options.crop_scale}: must be in (0, 1]")
    if not 0 <= options.hflip <= 1:
        raise UsageError(f"--hflip {options.hflip}: must be in [0, 1]")
    spec = datasets.parse_spec(options.data)
    if spec.split not in (None, "train"):
        raise UsageError(f"--data {options.data}: finetune trains on the train split (Val is held out for it)")
    randaug = normalise_randaug(options.grid.randaug)
    for value in randaug:
        if value != NO_AUGMENTATION:
            models.check_randaug(value)
    grid = Grid(**{**asdict(options.grid), "randaug": randaug})
    points = expand_grid(grid, lambda aug: datasets.paper_epochs(spec.kind, aug != NO_AUGMENTATION))
    if options.point is not None:
        bad = [i for i in options.point if not 0 <= i < len(points)]
        if bad:
            raise UsageError(f"--point {bad[0]} is out of range: the grid has {len(points)} points (0..{len(points) - 1})")
        points = [points[i] for i in options.point]
    if not points:
        raise UsageError("the grid has no points")
    return points


def finetune(options: FinetuneOptions) -> dict:
    """Run (or resume) the sweep; returns the manifest."""
    from negmerge_cli.checkpoint import provenance
    from negmerge_cli.clip import datasets, models, train
    from negmerge_cli.clip.evaluate import ImageCache, evaluate_cached
    from negmerge_cli.clip.progress import log
    from negmerge_cli.clip.zeroshot import build_head
    from negmerge_cli.units import parse_size, resolve_device

    points = plan(options)
    ranks = train.init_distributed()
    try:
        quiet = options.quiet or not ranks.is_main
        device = _rank_device(resolve_device(options.device), ranks)
        budget = parse_size(options.cache_memory, "--cache-memory")
        models.check_model_name(options.model)
        train_set = datasets.load_dataset(options.data, "train", options.classnames, options.templates)
        val_set = datasets.load_dataset(_val_spec(options.data), "val", options.classnames, options.templates)
        for point in points:  # fail on an indivisible batch before anything is written
            train.micro_batch_size(_settings(options, point), ranks.world_size)

        folder = SweepFolder(options.output, identity_of(options.model, options.pretrained, options.data,
                                                         options.batch_size, options.warmup_steps,
                                                         options.templates, options.classnames,
                                                         options.crop_scale, options.hflip))
        if ranks.is_main:
            # build the base before touching DIR: weights that do not fit fail with nothing written
            base_model = None if folder.base.exists() else models.create_model(options.model, options.pretrained)
            with folder.locked():
                folder.check_identity()
                if not folder.base.exists():
                    base_model = base_model or models.create_model(options.model, options.pretrained)
                    metadata = provenance("finetune", role="base", model=options.model,
                                          pretrained=options.pretrained, data=options.data)
                    models.save_checkpoint(base_model, folder.base, metadata)
                    log(f"wrote {folder.base}", quiet)
        ranks.barrier()
        todo = [p for p in points if not folder.finished(p)]
        for point in points:
            if point not in todo:
                log(f"skip {point.name} (finished)", quiet)
        ranks.barrier()  # every rank has decided before rank 0 writes anything new

        tokenizer = models.tokenizer_for(options.model)
        model = models.create_model(options.model, str(folder.base), device)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        head = build_head(model, tokenizer, train_set.classnames, train_set.templates)
        val_cache = None
        if ranks.is_main:
            val_cache = ImageCache.build(val_set, models.transforms_for(model, train=False), budget,
                                         options.workers, quiet)
            if folder.base_metrics() is None:
                metrics = evaluate_cached(model, val_cache, head, options.eval_batch_size, device)
                folder.set_base_metrics(metrics)
                log(f"base Val acc1 {100 * metrics['acc1']:.2f}%", quiet)

        for point in todo:
            model.load_state_dict(base_state)
            settings = _settings(options, point)
            augment = None if point.randaug == NO_AUGMENTATION else point.randaug
            data = train_set.with_transform(models.transforms_for(model, train=True, randaug=augment,
                                                                  crop_scale=options.crop_scale, hflip=options.hflip))
            if ranks.is_main:
                folder.write_record(point, {"status": "running", "host": socket.gethostname(), "pid": os.getpid(),
                                            "hyperparameters": point.hyperparameters()})
            try:
                stats = train.train_image_encoder(model, head, data, settings, device, ranks, quiet,
                                                  description=f"[{point.index}] {point.name}")
            except Exception as exc:
                if ranks.is_main:
                    folder.write_record(point, {"status": "failed", "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                                "hyperparameters": point.hyperparameters()})
                raise
            if ranks.is_main:
                metrics = evaluate_cached(model, val_cache, head, options.eval_batch_size, device)
                metadata = provenance("finetune", model=options.model, pretrained=options.pretrained,
                                      data=options.data, base=folder.base.name, hyperparameters=point.hyperparameters(),
                                      val_acc1=f"{metrics['acc1']:.6f}")
                models.save_checkpoint(model, folder.checkpoint(point), metadata, force=True)
                folder.write_record(point, {"status": "done", "file": folder.checkpoint(point).name,
                                            "hyperparameters": point.hyperparameters(), "val": metrics,
                                            "train": stats})
                log(f"{point.name}: Val acc1 {100 * metrics['acc1']:.2f}%  ({stats['images_per_s']:.0f} img/s)", quiet)
            ranks.barrier()
        return folder.rebuild_manifest() if ranks.is_main else {}
    finally:
        train.shutdown_distributed(ranks)


def _settings(options: FinetuneOptions, point: Point):
    from negmerge_cli.clip.train import TrainSettings

    return TrainSettings(lr=point.lr, wd=point.wd, label_smoothing=point.label_smoothing, seed=point.seed,
                         epochs=point.epochs, steps=point.steps, batch_size=options.batch_size,
                         accum_steps=options.accum_steps, warmup_steps=options.warmup_steps, workers=options.workers)


def _val_spec(data: str) -> str:
    from negmerge_cli.clip.datasets import parse_spec

    spec = parse_spec(data)
    base = data.rsplit(":", 1)[0] if spec.split else data
    return f"{base}:val"


def _rank_device(device: torch.device, ranks) -> torch.device:
    if device.type == "cuda" and ranks.enabled:
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device
