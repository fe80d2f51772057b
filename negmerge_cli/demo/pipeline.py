"""The demo pipeline: every step is a library stage, the same code the CLI commands run.

    pretrained tiny CLIP (cached) -> finetune k models on digits -> merge (NegMerge and baselines)
    -> lambda search on Val (digits forget, textures retain) -> apply -> test accuracies
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from negmerge_cli.core import files
from negmerge_cli.demo import tasks
from negmerge_cli.demo.agreement import vector_agreement
from negmerge_cli.demo.pretrain import MODEL, PretrainRecipe, pretrained_checkpoint
from negmerge_cli.report.plots import save
from negmerge_cli.report.rows import Curve
from negmerge_cli.results import DROPPING_METHODS, Accuracies, DemoResults, Outcome, SearchResult

METHODS = ("negmerge", "mean", "ties", "magmax")
FORGET, RETAIN = "digits", "textures"
CHANCE = {"forget": 1 / len(tasks.DIGIT_CLASSES), "retain": 1 / len(tasks.TEXTURE_CLASSES)}
THRESHOLD = 0.95
PAPER_COEFS = [round(i / 20, 10) for i in range(21)]  # 0, 0.05, ..., 1: the paper's grid
# The second table's grid, 0 to 3 (the paper's, then steps of 0.1): the methods' vectors differ in
# norm, so the end of the paper's grid stops some of them before the retain bar binds.
EXTENDED_COEFS = PAPER_COEFS + [round(1 + i / 10, 10) for i in range(1, 21)]


VARIES = ("seeds", "hyperparameters")
# The hyperparameter variant's grid, fixed from the seed variant before any run (never tuned on the
# outcome): the seed variant's lr with a factor of 2 either side, and (full) its 100 steps split
# into 50 and 150, so k and the total number of training steps are the seed variant's.
VARIED_LRS = (5e-4, 1e-3, 2e-3)


@dataclass(frozen=True)
class DemoSettings:
    """The reduced (``quick``) and full settings, and what the k fine-tunes differ in (``vary``).

    ``seeds`` (the default): their seed (data order and initial batches) at one learning rate and
    step count. ``hyperparameters``: their learning rate (and, in the full setting, step count) at
    one seed, the paper's premise of k models from a hyperparameter search; the same k, total steps
    and everything else. The paper varies RandAugment; here timm's RandAugment mixes colour channels
    (Invert, SolarizeAdd, Color, Contrast), which are exactly what keeps the two tiny tasks apart,
    and with it the chosen lambda's retain accuracy fell to the 95% limit (see docs/demo.md)."""

    randaug: tuple[str, ...]
    steps: tuple[int, ...]
    lr: tuple[float, ...] = (1e-3,)
    seeds: tuple[int, ...] = (0,)
    vary: str = "seeds"
    batch_size: int = 64
    warmup_steps: int = 10
    crop_scale: float = 0.6  # only used with RandAugment: 16-px digits want gentler crops ...
    hflip: float = 0.0  # ... and no mirrored digits
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)

    @classmethod
    def full(cls, vary: str = "seeds") -> "DemoSettings":
        if _checked(vary) == "hyperparameters":
            return cls(("none",), steps=(50, 150), lr=VARIED_LRS, vary=vary)
        return cls(("none",), steps=(100,), seeds=(0, 1, 2, 3, 4, 5))

    @classmethod
    def quick(cls, vary: str = "seeds") -> "DemoSettings":
        if _checked(vary) == "hyperparameters":
            return cls(("none",), steps=(80,), lr=VARIED_LRS, vary=vary)
        return cls(("none",), steps=(80,), seeds=(0, 1, 2))

    @property
    def k(self) -> int:
        return len(self.randaug) * len(self.lr) * len(self.steps) * len(self.seeds)

    @property
    def total_steps(self) -> int:
        """Training steps of all k fine-tunes together: the variants' common budget."""
        return self.k // len(self.steps) * sum(self.steps)

    def grid(self):
        """The k fine-tunes as ``finetune``'s grid (trained with ``seed_mode="shared"``)."""
        from negmerge_cli.stages import Grid

        return Grid(lr=list(self.lr), steps=list(self.steps), seed=list(self.seeds), randaug=list(self.randaug))

    def to_json(self) -> dict:
        """results.json's ``settings``: what the k fine-tunes differ in, and the grid they span."""
        return {"vary": self.vary, "randaug": list(self.randaug), "lr": list(self.lr), "steps": list(self.steps),
                "seeds": list(self.seeds), "k": self.k, "total_steps": self.total_steps}


def _checked(vary: str) -> str:
    from negmerge_cli.core.errors import UsageError, option

    if vary not in VARIES:
        raise UsageError(f"{option('vary')} {vary!r}: choose {' or '.join(VARIES)}")
    return vary


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
    from negmerge_cli.core.output import output

    output().log(f"demo: {message}")


def run_demo(workdir: Path, settings: DemoSettings, cache_dir: Path, force: bool = False) -> DemoResults:
    """Run every stage into ``workdir``; return results.json's content (also written there).

    An earlier demo's results in ``workdir`` are replaced only with ``force``."""
    with files.operation():
        for name in ("results.json", "commands.sh", "tradeoff.png"):
            files.check_target(Path(workdir) / name, force=force)
        return _run(Workdir(Path(workdir)), settings, cache_dir, force)


def _run(work: Workdir, settings: DemoSettings, cache_dir: Path, force: bool) -> DemoResults:
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
    headline, matched, nonzero = {}, {}, {}
    for method in METHODS:
        log(f"{method}: merge, choose lambda on Val (the paper's grid, then 0 to {EXTENDED_COEFS[-1]:g}), test")
        vector = work / "merged" / f"{method}.safetensors"
        nonzero[method] = _merge(method, finetuned, base, vector, commands, force)
        fraction = {"nonzero_fraction": nonzero[method].nonzero_fraction}  # of all float elements, as inspect
        outcome, extended = _unlearn_both(work, method, base, vector, commands, force)
        headline[method], matched[method] = replace(outcome, **fraction), replace(extended, **fraction)
    # kept, for the methods that drop elements: out of the elements the fine-tunes changed (non-zero in their mean)
    for method in (m for m in METHODS if m in DROPPING_METHODS):
        kept = {"kept_fraction": nonzero[method].nonzero / max(1, nonzero["mean"].nonzero)}
        headline[method], matched[method] = replace(headline[method], **kept), replace(matched[method], **kept)
    log("best single task vector: search each of the k vectors")
    headline["best_single"], matched["best_single"] = _best_single(work, base, finetuned, commands, force)
    agreement = vector_agreement([work / "vectors" / path.name for path in finetuned],
                                 {method: work / "merged" / f"{method}.safetensors" for method in METHODS})
    timings["total_s"] = round(time.perf_counter() - started, 1)
    results = DemoResults(
        MODEL, FORGET, RETAIN, THRESHOLD, len(finetuned), Accuracies(start["forget"], start["retain"]),
        Accuracies(CHANCE["forget"], CHANCE["retain"]), headline, matched, list(EXTENDED_COEFS),
        settings=settings.to_json(), timings=timings, vectors=agreement)
    figure = _tradeoff_figure(work, results)
    with files.deferred_commits():  # the three results together, or none of them
        save(figure, work / "tradeoff.png", force=force)
        files.write_json(work / "results.json", results.to_json(), force=force)
        files.write_text(work / "commands.sh", "#!/bin/sh\nset -e\n" + "\n".join(commands) + "\n", force=force)
    return results


def _tradeoff_figure(work: Workdir, results: DemoResults):
    """Every method's trade-off, drawn from the demo's own files the way ``negmerge report`` does."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.report.plots import tradeoff
    from negmerge_cli.results.files import SearchFile

    curves = []
    for setting, outcomes in (("", results.methods), (results.matched_label, results.matched)):
        for method, outcome in outcomes.items():
            search = schemas.read(work / outcome.search, SearchFile).build()
            curves.append(Curve(method, FORGET, search, setting))
    return tradeoff(curves, f"{MODEL}: unlearning {FORGET}, keeping {RETAIN} (Val)")


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
    from negmerge_cli.stages import FinetuneOptions, finetune

    sweep = work / "finetune"
    log(f"fine-tuning {settings.k} models on digits, differing in their {settings.vary} "
        f"({settings.total_steps} steps in all)")
    options = FinetuneOptions(
        model=MODEL, data=str(work.digits), output=sweep, pretrained=str(pretrained),
        grid=settings.grid(),
        batch_size=settings.batch_size, warmup_steps=settings.warmup_steps, workers=0,
        crop_scale=settings.crop_scale, hflip=settings.hflip,
        seed_mode="shared",  # each fine-tune is trained with its very seed (one seed: the same data order)
    )
    manifest = finetune(options)
    grid = "".join(f" --{name} {value:g}" for name, values in (("lr", settings.lr), ("steps", settings.steps),
                                                               ("seed", settings.seeds)) for value in values)
    if settings.randaug != ("none",):
        grid += "".join(f" --randaug {r}" for r in settings.randaug)
        grid += f" --crop-scale {settings.crop_scale} --hflip {settings.hflip}"
    commands.append(
        f"negmerge finetune --model {MODEL} --pretrained {pretrained} --data {work.digits} -o {sweep}"
        f"{grid} --seed-mode shared --batch-size {settings.batch_size} --warmup-steps {settings.warmup_steps}"
    )
    return manifest


def _merge(method: str, finetuned: list[Path], base: Path, output: Path, commands: list[str], force: bool):
    from negmerge_cli.stages import StreamOptions, merge_vectors

    params = {"density": 0.2} if method == "ties" else {}
    result = merge_vectors(finetuned, output, method, base=base, options=StreamOptions(device="cpu", force=force), **params)
    extra = " --density 0.2" if method == "ties" else ""
    commands.append(f"negmerge merge --method {method}{extra} --base {base} -o {output} {_points_glob(base)}")
    return result


def _unlearn_both(work: Workdir, name: str, base: Path, vector: Path, commands: list[str],
                  force: bool) -> tuple[Outcome, Outcome]:
    """The paper's rule on its grid (the headline), and the same rule on the extended grid."""
    paper, extended = _searches(work, name, base, vector, force, commands, plot=True)
    headline = _unlearn(work, name, base, vector, paper, commands, force)
    return headline, _unlearn(work, f"{name}-matched", base, vector, extended, commands, force, same_as=headline)


def _unlearn(work: Workdir, name: str, base: Path, vector: Path, searched: tuple[SearchResult, Path],
             commands: list[str], force: bool, same_as: Optional[Outcome] = None) -> Outcome:
    """Apply the lambda a search chose and measure test accuracy (unless ``same_as`` was tested at
    the same lambda)."""
    from negmerge_cli.stages import StreamOptions, apply_vector

    search, json_path = searched
    chosen = search.chosen
    coef = chosen.coef if chosen else 0.0
    found = {"coef": coef, "feasible": chosen is not None, "val_forget": chosen and chosen.forget,
             "val_retain": chosen and chosen.retain, "search": str(json_path.relative_to(work.root))}
    if same_as is not None and same_as.coef == coef:
        return Outcome(forget=same_as.forget, retain=same_as.retain, **found)
    unlearned = work / "unlearned" / f"{name}.safetensors"
    apply_vector(base, vector, -coef, unlearned, StreamOptions(device="cpu", force=force))
    commands.append(f"negmerge apply --base {base} --vector {vector} --scale -{coef:g} -o {unlearned}")
    test = _test_accuracies(work, unlearned)
    commands.append(
        f"negmerge eval --model {MODEL} --checkpoint {unlearned} --data {work.digits}:test --data {work.textures}:test"
    )
    return Outcome(forget=test["forget"], retain=test["retain"], **found)


def _searches(work: Workdir, name: str, base: Path, vector: Path, force: bool, commands: list[str],
              plot: bool = False) -> list[tuple[SearchResult, Path]]:
    """Lambda on the paper's grid (``search/NAME.json``) and on the extended one
    (``search/NAME-matched.json``), each lambda evaluated once for both."""
    from negmerge_cli.clip.eval_run import search_coefficients
    from negmerge_cli.report.plots import save, search_curve
    from negmerge_cli.stages import SearchOptions

    folder = work / "search"
    grids = [SearchOptions(str(vector), f"{work.digits}:val", f"{work.textures}:val", coefs=list(coefs),
                           threshold=THRESHOLD) for coefs in (PAPER_COEFS, EXTENDED_COEFS)]
    paths = [folder / f"{name}.json", folder / f"{name}-matched.json"]
    plot_path = folder / f"{name}.png"
    results = search_coefficients(_eval_options(base), grids, json_outs=paths,
                                  also_writes=[plot_path if plot else None], force=force)
    if plot:
        save(search_curve(results[0]), plot_path, force=force)
    search = (f"negmerge eval --model {MODEL} --checkpoint {base} --vector {vector} --forget {work.digits}:val "
              f"--retain {work.textures}:val")
    commands.append(f"{search} --json {paths[0]}" + (f" --plot {plot_path}" if plot else ""))
    commands.append(f"{search} --coefs {','.join(f'{c:g}' for c in EXTENDED_COEFS)} --json {paths[1]}")
    return list(zip(results, paths))


def _best_single(work: Workdir, base: Path, finetuned: list[Path], commands: list[str],
                 force: bool) -> tuple[Outcome, Outcome]:
    """The paper's 'best single task vector': of the k vectors, the one whose chosen lambda gives
    the lowest Val forget accuracy (under the same retain rule), on each grid."""
    from negmerge_cli.stages import StreamOptions, make_vectors

    folder = work / "vectors"
    make_vectors(base, finetuned, folder, StreamOptions(device="cpu", force=force))
    commands.append(f"negmerge vector --base {base} --out-dir {folder} {_points_glob(base)}")
    searched = [(folder / path.name, _searches(work, f"single-{path.stem}", base, folder / path.name, force, commands))
                for path in finetuned]
    outcomes = []
    for grid, suffix in ((0, ""), (1, "-matched")):
        searches = [(vector, found[grid]) for vector, found in searched]
        feasible = [(vector, found) for vector, found in searches if found[0].chosen is not None]
        if not feasible:
            outcomes.append(Outcome(0.0, None, None, feasible=False))
            continue
        vector, found = min(feasible, key=lambda pair: pair[1][0].chosen.forget)  # ties: the first
        same_as = outcomes[0] if outcomes and outcomes[0].vector == vector.name else None
        outcome = _unlearn(work, f"best_single{suffix}", base, vector, found, commands, force, same_as)
        outcomes.append(replace(outcome, vector=vector.name))
    return outcomes[0], outcomes[1]


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
