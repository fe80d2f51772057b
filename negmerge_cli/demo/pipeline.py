"""The demo pipeline: every step is a library stage, the same code the CLI commands run.

    pretrained tiny CLIP (cached) -> finetune k models on digits -> merge (NegMerge and baselines)
    -> lambda search on Val (digits forget, textures retain) -> apply -> test accuracies
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from negmerge_cli import files
from negmerge_cli.demo import tasks
from negmerge_cli.demo.pretrain import MODEL, PretrainRecipe, pretrained_checkpoint

METHODS = ("negmerge", "mean", "ties", "magmax")
CHANCE = {"forget": 1 / len(tasks.DIGIT_CLASSES), "retain": 1 / len(tasks.TEXTURE_CLASSES)}


@dataclass(frozen=True)
class DemoSettings:
    """The reduced (``quick``) and full settings.

    The k fine-tunes differ in their seed (data order and initial batches) at one learning rate.
    The paper varies RandAugment instead; here timm's RandAugment mixes colour channels (Invert,
    SolarizeAdd, Color, Contrast), which are exactly what keeps the two tiny tasks apart, and with
    it the chosen lambda's retain accuracy fell to the 95% limit (see docs/demo.md)."""

    randaug: tuple[str, ...]
    steps: int
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 64
    warmup_steps: int = 10
    crop_scale: float = 0.6  # only used with RandAugment: 16-px digits want gentler crops ...
    hflip: float = 0.0  # ... and no mirrored digits
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)

    @classmethod
    def full(cls) -> "DemoSettings":
        return cls(("none",), steps=100, seeds=(0, 1, 2, 3, 4, 5))

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(("none",), steps=80, seeds=(0, 1, 2))


@dataclass
class Workdir:
    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def digits(self) -> Path:
        return self.root / "data" / "digits"

    @property
    def textures(self) -> Path:
        return self.root / "data" / "textures"


def log(message: str) -> None:
    from negmerge_cli.output import output

    output().log(f"demo: {message}")


def run_demo(workdir: Path, settings: DemoSettings, cache_dir: Path, force: bool = False) -> dict:
    """Run every stage into ``workdir``; return results.json's content (also written there).

    An earlier demo's results in ``workdir`` are replaced only with ``force``."""
    with files.operation():
        for name in ("results.json", "commands.sh", "tradeoff.png"):
            files.check_target(Path(workdir) / name, force=force)
        return _run(Workdir(Path(workdir)), settings, cache_dir, force)


def _run(work: Workdir, settings: DemoSettings, cache_dir: Path, force: bool) -> dict:
    from negmerge_cli.clip.templates import GENERIC

    started = time.perf_counter()
    commands: list[str] = []
    _write_tasks(work)

    log("pretrained tiny CLIP: " + ("training it (cached for later runs)" if not (cache_dir / settings.pretrain.cache_name()).exists() else "cached"))
    cached, trained = pretrained_checkpoint(settings.pretrain, cache_dir, GENERIC, None)
    pretrained = work / "pretrained.safetensors"
    if not pretrained.exists():
        files.write_bytes(pretrained, cached.read_bytes(), owned=True)
    timings = {"pretrain_s": round(time.perf_counter() - started, 1), "pretrain_cached": not trained}

    manifest = _finetune(work, pretrained, settings, commands)
    base = work / "finetune" / manifest.base_file
    finetuned = [work / "finetune" / point.file for point in manifest.finished]
    timings["finetune_s"] = round(time.perf_counter() - started - timings["pretrain_s"], 1)

    start = _test_accuracies(work, base)
    results = {"start": start, "chance": dict(CHANCE), "methods": {}, "k": len(finetuned),
               "settings": {"randaug": list(settings.randaug), "steps": settings.steps, "lr": settings.lr}}
    nonzero = {}
    for method in METHODS:
        log(f"{method}: merge, choose lambda on Val, test")
        vector = work / "merged" / f"{method}.safetensors"
        nonzero[method] = _merge(method, finetuned, base, vector, commands, force)
        results["methods"][method] = _unlearn(work, method, base, vector, commands, force)
        results["methods"][method]["nonzero_fraction"] = nonzero[method].kept_fraction
    # what NegMerge kept, out of the elements the fine-tunes changed (non-zero in their mean)
    results["methods"]["negmerge"]["kept"] = nonzero["negmerge"].nonzero / max(1, nonzero["mean"].nonzero)
    log("best single task vector: search each of the k vectors")
    results["methods"]["best_single"] = _best_single(work, base, finetuned, commands, force)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    results["timings"] = timings
    with files.deferred_commits():  # the three results together, or none of them
        files.write_bytes(work / "tradeoff.png", (work / "search" / "negmerge.png").read_bytes(), force=force)
        files.write_json(work / "results.json", results, force=force)
        files.write_text(work / "commands.sh", "#!/bin/sh\nset -e\n" + "\n".join(commands) + "\n", force=force)
    return results


def _write_tasks(work: Workdir) -> None:
    done = work / "data" / ".complete"
    if done.exists():
        return
    log("writing the built-in tasks as image folders (digits in red, textures in green/blue)")
    shutil.rmtree(work / "data", ignore_errors=True)
    tasks.write_image_folder(work.digits, tasks.digits(), tasks.DIGIT_CLASSES)
    tasks.write_image_folder(work.textures, tasks.textures(), tasks.TEXTURE_CLASSES)
    files.write_text(done, "", owned=True)


def _finetune(work: Workdir, pretrained: Path, settings: DemoSettings, commands: list[str]):
    from negmerge_cli.stages import FinetuneOptions, Grid, finetune

    sweep = work / "finetune"
    count = len(settings.randaug) * len(settings.seeds)
    log(f"fine-tuning {count} models on digits ({settings.steps} steps each, one per grid point)")
    options = FinetuneOptions(
        model=MODEL, data=str(work.digits), output=sweep, pretrained=str(pretrained),
        grid=Grid(lr=[settings.lr], steps=[settings.steps], seed=list(settings.seeds), randaug=list(settings.randaug)),
        batch_size=settings.batch_size, warmup_steps=settings.warmup_steps, workers=0,
        crop_scale=settings.crop_scale, hflip=settings.hflip,
        seed_mode="shared",  # the demo's k fine-tunes are its seeds 0..k-1, each trained with that very seed
    )
    manifest = finetune(options)
    grid = " ".join(f"--seed {s}" for s in settings.seeds) + " --seed-mode shared"
    if settings.randaug != ("none",):
        grid += "".join(f" --randaug {r}" for r in settings.randaug)
        grid += f" --crop-scale {settings.crop_scale} --hflip {settings.hflip}"
    commands.append(
        f"negmerge finetune --model {MODEL} --pretrained {pretrained} --data {work.digits} -o {sweep} "
        f"{grid} --lr {settings.lr} --steps {settings.steps} --batch-size {settings.batch_size} "
        f"--warmup-steps {settings.warmup_steps}"
    )
    return manifest


def _merge(method: str, finetuned: list[Path], base: Path, output: Path, commands: list[str], force: bool):
    from negmerge_cli.stages import StreamOptions, merge_vectors

    params = {"density": 0.2} if method == "ties" else {}
    result = merge_vectors(finetuned, output, method, base=base, options=StreamOptions(device="cpu", force=force), **params)
    extra = " --density 0.2" if method == "ties" else ""
    commands.append(f"negmerge merge --method {method}{extra} --base {base} -o {output} {_points_glob(base)}")
    return result


def _unlearn(work: Workdir, name: str, base: Path, vector: Path, commands: list[str], force: bool) -> dict:
    """Choose lambda on Val, apply it, and measure test accuracy."""
    from negmerge_cli.stages import StreamOptions, apply_vector

    search = _search(work, name, base, vector, force, plot=True)
    commands.append(
        f"negmerge eval --model {MODEL} --checkpoint {base} --vector {vector} --forget {work.digits}:val "
        f"--retain {work.textures}:val --json {work / 'search' / (name + '.json')} --plot {work / 'search' / (name + '.png')}"
    )
    chosen = search.chosen
    coef = chosen.coef if chosen else 0.0
    unlearned = work / "unlearned" / f"{name}.safetensors"
    apply_vector(base, vector, -coef, unlearned, StreamOptions(device="cpu", force=force))
    commands.append(f"negmerge apply --base {base} --vector {vector} --scale -{coef:g} -o {unlearned}")
    test = _test_accuracies(work, unlearned)
    commands.append(
        f"negmerge eval --model {MODEL} --checkpoint {unlearned} --data {work.digits}:test --data {work.textures}:test"
    )
    return {"lambda": coef, "forget": test["forget"], "retain": test["retain"],
            "val_forget": chosen.forget if chosen else None, "feasible": chosen is not None}


def _search(work: Workdir, name: str, base: Path, vector: Path, force: bool, plot: bool):
    from negmerge_cli.stages import SearchOptions, search_coefficient

    folder = work / "search"
    options = SearchOptions(str(vector), f"{work.digits}:val", f"{work.textures}:val")
    return search_coefficient(_eval_options(base), options, json_out=folder / f"{name}.json",
                              plot=folder / f"{name}.png" if plot else None, force=force)


def _best_single(work: Workdir, base: Path, finetuned: list[Path], commands: list[str], force: bool) -> dict:
    """The paper's 'best single task vector': of the k vectors, the one whose chosen lambda gives
    the lowest Val forget accuracy (under the same retain rule)."""
    from negmerge_cli.stages import StreamOptions, make_vectors

    folder = work / "vectors"
    make_vectors(base, finetuned, folder, StreamOptions(device="cpu", force=force))
    commands.append(f"negmerge vector --base {base} --out-dir {folder} {_points_glob(base)}")
    best = None
    for path in finetuned:
        vector = folder / path.name
        chosen = _search(work, f"single-{path.stem}", base, vector, force, plot=False).chosen
        if chosen and (best is None or chosen.forget < best[1].forget):
            best = (vector, chosen)
    if best is None:
        return {"lambda": 0.0, "forget": None, "retain": None, "feasible": False}
    vector, _ = best
    return _unlearn(work, "best_single", base, vector, commands, force) | {"vector": vector.name}


def _eval_options(checkpoint: Path):
    from negmerge_cli.stages import EvalOptions

    return EvalOptions(model=MODEL, checkpoint=str(checkpoint), device="cpu", workers=0)


def _points_glob(base: Path) -> str:
    """The sweep's checkpoints as the shell would list them (every point file starts with lr)."""
    return str(base.parent / "lr*.safetensors")


def _test_accuracies(work: Workdir, checkpoint: Path) -> dict:
    from negmerge_cli.stages import evaluate

    forget, retain = evaluate([f"{work.digits}:test", f"{work.textures}:test"], _eval_options(checkpoint))
    return {"forget": forget.metrics.acc1, "retain": retain.metrics.acc1}
