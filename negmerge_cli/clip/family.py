"""The CLIP family behind the :class:`~negmerge_cli.training.family.Family` interface: OpenCLIP
models, zero-shot heads from class names and templates, fine-tunes of the image encoder (the paper's
first scenario), zero-shot evaluation and the forget/retain lambda search."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.family import FinetuneDefaults
from negmerge_cli.training.options import FINETUNING_MODES, EvalOptions, FinetuneOptions, SearchOptions
from negmerge_cli.training.sweep import (
    NO_AUGMENTATION,
    Grid,
    GridPoint,
    check_seed_mode,
    expand_grid,
    normalise_randaug,
    select_points,
)


class ClipFamily:
    name = "clip"
    # the released code's: AdamW at 1e-5 with weight decay 0.1 and 500 warm-up steps
    finetune_defaults = FinetuneDefaults(lr=1e-5, wd=0.1, warmup_steps=500, optimizer="adamw")
    distributed = True

    def owns(self, model: str) -> bool:
        from negmerge_cli.clip.models import is_model_name

        return is_model_name(model)

    def plan(self, options: FinetuneOptions) -> list[GridPoint]:
        from negmerge_cli.clip import datasets, freeze, models

        if options.finetuning_mode not in FINETUNING_MODES:
            raise UsageError(f"{option('finetuning_mode')} {options.finetuning_mode!r}: choose "
                             f"{' or '.join(FINETUNING_MODES)}")
        if options.optimizer != "adamw":
            raise UsageError(f"{option('optimizer')} {options.optimizer}: CLIP models train with adamw only")
        if options.randaug_interpolation not in models.RANDAUG_INTERPOLATIONS:
            raise UsageError(f"{option('randaug_interpolation')} {options.randaug_interpolation!r}: must be one of "
                             f"{', '.join(models.RANDAUG_INTERPOLATIONS)}")
        check_seed_mode(options.seed_mode)
        spec = datasets.parse_spec(options.data)
        if spec.split not in (None, "train"):
            raise UsageError(f"{option('data')} {options.data}: finetune trains on the train split (Val is held out "
                             "for it)")
        randaug = normalise_randaug(options.grid.randaug)
        for value in randaug:
            if value != NO_AUGMENTATION:
                models.check_randaug(value)
        grid = Grid(**{**asdict(options.grid), "randaug": randaug})
        points = expand_grid(grid, lambda aug: datasets.paper_epochs(spec.kind, aug != NO_AUGMENTATION),
                             options.seed_mode)
        if options.freeze:
            freeze.select(freeze.encoder_sizes(options.model), options.freeze)
        points = select_points(points, options.point)
        if not points:
            raise UsageError("the grid has no points")
        return points

    def trainer(self, options: FinetuneOptions, ranks: Ranks):
        from negmerge_cli.clip.sweep_run import ClipTrainer

        return ClipTrainer(options, ranks)

    def evaluate(self, data: Sequence[str], options: EvalOptions, json_out: Optional[Path], force: bool):
        from negmerge_cli.clip import eval_run

        return eval_run.evaluate(data, options, json_out=json_out, force=force)

    def search(self, data: Sequence[str], options: EvalOptions, search: SearchOptions, json_out: Optional[Path],
               force: bool, also_writes: Sequence[Optional[Path]] = ()):
        from negmerge_cli.clip import eval_run

        if data:
            raise UsageError(f"{option('data')} does not go with {option('vector')} for CLIP models; give "
                             f"{option('forget')} and {option('retain')}")
        return eval_run.search_coefficient(options, search, json_out=json_out, force=force, also_writes=also_writes)
