"""negmerge finetune: a sweep of OpenCLIP image-encoder fine-tunes, one checkpoint per grid point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.defaults import default
from negmerge_cli.core.errors import UsageError
from negmerge_cli.core.escape import json_text, number
from negmerge_cli.training.options import FinetuneOptions as Options

GridValues = Optional[list[str]]


def _grid_option(flag: str, help: str):
    return typer.Option(flag, help=help + " Repeat the option or separate values by commas.")


@opt.with_options(opt.QUIET)
def finetune(
    model: opt.Model,
    data: Annotated[str, typer.Option("--data", "-d", help="Training data spec: digits, an image folder, or NAME:ROOT (trains on :train, the part outside Val).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Sweep folder: base.safetensors, one checkpoint per point, manifest.json.", file_okay=False)],
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="open_clip pretrained tag (needs network), a local checkpoint, or a Hub repo id ORG/NAME[@REVISION]; omitted: seeded random init.")] = None,
    lr: Annotated[GridValues, _grid_option("--lr", "Learning rate(s) [default: 1e-5; classifiers 0.1].")] = None,
    epochs: Annotated[GridValues, _grid_option("--epochs", "Epoch count(s) [default: the paper's for its datasets].")] = None,
    steps: Annotated[GridValues, _grid_option("--steps", "Optimizer step count(s), instead of --epochs.")] = None,
    wd: Annotated[GridValues, _grid_option("--wd", "Weight decay(s) [default: 0.1; classifiers 5e-4].")] = None,
    label_smoothing: Annotated[GridValues, _grid_option("--label-smoothing", "Label smoothing(s) [default: 0].")] = None,
    seed: Annotated[GridValues, _grid_option("--seed", "Seed(s) for shuffling and augmentation; with --seed-mode per-point, each point's own seed is derived from it [default: 0].")] = None,
    seed_mode: Annotated[str, typer.Option("--seed-mode", help="per-point: every grid point trains with its own seed, derived from --seed and the point (the released runs each had their own); shared: every point trains with its --seed value as given.")] = default(Options, "seed_mode"),
    randaug: Annotated[GridValues, _grid_option("--randaug", "timm RandAugment string(s) like rand-m1-n1-mstd0.5; 'none' for no augmentation [default]; 'paper' for the paper's 30.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Global batch per optimizer step (split over torchrun processes and --accum-steps).")] = default(Options, "batch_size"),
    accum_steps: Annotated[int, typer.Option("--accum-steps", help="Gradient accumulation steps per optimizer step.")] = default(Options, "accum_steps"),
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", help="Linear warm-up steps (capped at a quarter of a run) [default: 500; classifiers 0].")] = None,
    workers: opt.Workers = default(Options, "workers"),
    point: Annotated[Optional[list[int]], typer.Option("--point", help="Run only grid point N (0-based; repeatable), e.g. one per Slurm array task.")] = None,
    list_points: Annotated[bool, typer.Option("--list-points", help="Print the grid (index, name) as JSON lines on stdout and exit.")] = False,
    templates: opt.Templates = None,
    classnames: opt.Classnames = None,
    cache_memory: opt.CacheMemory = default(Options, "cache_memory"),
    crop_scale: Annotated[float, typer.Option("--crop-scale", help="With --randaug: smallest random-resized-crop area (timm's and the paper's 0.08).")] = default(Options, "crop_scale"),
    hflip: Annotated[float, typer.Option("--hflip", help="With --randaug: horizontal flip probability (timm's and the paper's 0.5).")] = default(Options, "hflip"),
    quick_gelu: opt.QuickGelu = None,
    precision: opt.Precision = default(Options, "precision"),
    randaug_interpolation: Annotated[str, typer.Option("--randaug-interpolation", help="With --randaug: resampling of crops and geometric ops: random (timm's default, the release's), bicubic or bilinear.")] = default(Options, "randaug_interpolation"),
    freeze: Annotated[Optional[list[str]], typer.Option("--freeze", metavar="GLOB", help="Keep the image-encoder parameters whose OpenCLIP state-dict names match GLOB at their base values (repeatable); the released code froze 'visual.transformer.resblocks.*.attn.*'.")] = None,
    finetuning_mode: Annotated[str, typer.Option("--finetuning-mode", help="standard, or linear: train the linearization of the image encoder around the base (tangent fine-tuning, the release's second mode); its checkpoints are evaluated linearized.")] = default(Options, "finetuning_mode"),
    num_classes: opt.NumClasses = None,
    forget_split: opt.ForgetSplitFile = None,
    subset: Annotated[str, typer.Option("--subset", help="Classifiers: train on all of the train split, retain (Dr) or forget (Df); retain/forget need --forget-split.", rich_help_panel="Classifier models")] = default(Options, "subset"),
    objective: Annotated[str, typer.Option("--objective", help="Classifiers: ce (cross-entropy), ascent (gradient ascent, GA), wrong-labels (CE against a random wrong class), random-labels (the published RL: each epoch Df with uniformly random labels, then Dr; needs --forget-split), salun (random-labels on the salient weights only), l1-sparse (CE plus a decaying l1 penalty).", rich_help_panel="Classifier models")] = default(Options, "objective"),
    saliency_fraction: Annotated[float, typer.Option("--saliency-fraction", help="salun: the share of all weights trained, those with the largest forget-loss gradient (SalUn's mask with_0.5.pt).", rich_help_panel="Classifier models")] = default(Options, "saliency_fraction"),
    saliency_freeze: Annotated[bool, typer.Option("--saliency-freeze", help="salun: also hold the weights outside the mask at their start values (the code's 2026 fix); default: only their gradients are masked, as in the published runs.", rich_help_panel="Classifier models")] = default(Options, "saliency_freeze"),
    l1_alpha: Annotated[float, typer.Option("--l1-alpha", help="l1-sparse: the l1 coefficient in the first epoch, decaying linearly to 0 over the run.", rich_help_panel="Classifier models")] = default(Options, "l1_alpha"),
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="sgd (momentum 0.9; the classifier default) or adamw (CLIP's, its only one).", rich_help_panel="Classifier models")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="Classifiers: cosine, or step (x0.1 at each --milestones epoch; without them at 50% and 75% of the steps).", rich_help_panel="Classifier models")] = default(Options, "schedule"),
    milestones: Annotated[GridValues, typer.Option("--milestones", help="With --schedule step: the 0-based epochs from which the rate is x0.1 again, e.g. 91,136 (the protocol's MultiStepLR, stepped per epoch). Repeat the option or separate values by commas.", rich_help_panel="Classifier models")] = None,
    augment: Annotated[Optional[str], typer.Option("--augment", help="Classifiers: crop-flip (pad-4 random crop + horizontal flip; the default), crop (the default for digits) or none.", rich_help_panel="Classifier models")] = None,
    device: opt.Device = default(Options, "device"),
) -> None:
    """Fine-tune a CLIP image encoder against the frozen zero-shot head, or train a classifier, once per grid point.

    The sweep is the product of the grid options. Re-running skips finished points; under torchrun
    it trains data-parallel (NCCL on GPUs, gloo on CPU).
    """
    # (Long only for its option declarations; the work is in negmerge_cli.stages.finetuning.)
    from negmerge_cli.stages import Grid, plan
    from negmerge_cli.stages import finetune as run

    grid = Grid(
        lr=_values(lr, float, "--lr"),
        epochs=_or_default(_values(epochs, int, "--epochs"), Grid, "epochs"),
        steps=_or_default(_values(steps, int, "--steps"), Grid, "steps"),
        wd=_values(wd, float, "--wd"),
        label_smoothing=_or_default(_values(label_smoothing, float, "--label-smoothing"), Grid, "label_smoothing"),
        seed=_or_default(_values(seed, int, "--seed"), Grid, "seed"),
        randaug=_or_default(_values(randaug, str, "--randaug"), Grid, "randaug"),
    )
    options = Options(
        model=model, data=data, output=output, pretrained=pretrained, grid=grid, batch_size=batch_size,
        accum_steps=accum_steps, warmup_steps=warmup_steps, workers=workers, point=point, templates=templates,
        classnames=classnames, device=device, cache_memory=cache_memory, crop_scale=crop_scale, hflip=hflip,
        quick_gelu=quick_gelu, precision=precision, randaug_interpolation=randaug_interpolation,
        seed_mode=seed_mode, freeze=tuple(freeze or ()), finetuning_mode=finetuning_mode,
        num_classes=num_classes, forget_split=forget_split,
        subset=subset, objective=objective, optimizer=optimizer, schedule=schedule, augment=augment,
        milestones=tuple(_values(milestones, int, "--milestones") or ()), saliency_fraction=saliency_fraction,
        saliency_freeze=saliency_freeze, l1_alpha=l1_alpha,
    )
    if list_points:
        for p in plan(options):
            typer.echo(json_text({"index": p.index, "name": p.name, **p.hyperparameters()}, "stdout", indent=None),
                       nl=False)
        return
    manifest = run(options)
    if manifest:
        _print_table(manifest)


def _values(raw: GridValues, cast: Callable, flag: str) -> Optional[list]:
    """Repeated and/or comma-separated values (None: not given, the library's default); an option
    given only empty values leaves no points."""
    if raw is None:
        return None
    values = []
    for item in raw:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                values.append(cast(part))
            except ValueError:
                raise UsageError(f"{flag} {part!r}: not a valid {cast.__name__}") from None
    return values


def _or_default(values: Optional[list], options_type: type, name: str):
    return default(options_type, name) if values is None else values


def _print_table(manifest) -> None:
    from rich.table import Table

    from negmerge_cli.core.output import output

    table = Table(title="finetune sweep")
    for column in ("point", "status", "Val acc1", "img/s"):
        table.add_column(column, overflow="fold")
    if manifest.base_val:
        table.add_row("base", "", number(manifest.base_val.acc1, scale=100), "")
    for record in manifest.points:
        acc = number(record.val.acc1, scale=100) if record.val else ""
        rate = (record.train or {}).get("images_per_s", "")
        table.add_row(record.name, record.status, acc, str(rate))
    output().show(table)


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("finetune", short_help="Fine-tune a model once per point of a hyperparameter grid.",
                epilog=epilog("finetune"))(finetune)
