"""negmerge split: a forget/retain split of a classifier's training set, as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.core.errors import UsageError


@opt.with_options(opt.QUIET)
def split(
    data: Annotated[str, typer.Option("--data", "-d", help="Classifier data: digits, cifar10:ROOT, cifar100:ROOT, tinyimagenet:ROOT, or a folder with train/ and test/.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Split JSON to write.", dir_okay=False)],
    forget_fraction: Annotated[Optional[float], typer.Option("--forget-fraction", help="Random forgetting: this fraction of the training set (e.g. 0.1).")] = None,
    forget_classes: Annotated[Optional[str], typer.Option("--forget-classes", help="Class forgetting: comma-separated labels (e.g. 3,5).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random draw (default: 0; 2 with --protocol salun, as SalUn's code).", show_default=False)] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="negmerge: Df drawn from the whole training set (numpy PCG64); salun: SalUn's split of cifar10, cifar100 or tinyimagenet (CIFAR: a 10% per-class validation hold-out by RandomState(seed); then Df from the rest by RandomState(seed - 1)).")] = "negmerge",
    force: opt.Force = False,
) -> None:
    """Choose the forget set Df (the rest of the training set is the retain set Dr)."""
    from negmerge_cli.stages import make_split

    make_split(data, output, fraction=forget_fraction, classes=_classes(forget_classes), seed=seed, force=force,
               protocol=protocol)


def _classes(raw: Optional[str]) -> Optional[list[int]]:
    if raw is None:
        return None
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--forget-classes {raw!r}: give comma-separated integer labels") from None


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("split", short_help="Choose the forget set of a classifier's training data.",
                epilog=epilog("split"))(split)
