"""The classifier family behind the :class:`~negmerge_cli.training.family.Family` interface:
torchvision classifiers (and small-input ``-cifar`` ResNets) trained from scratch or fine-tuned on a
forget/retain subset (the paper's second scenario), measured by Dr/Df/Dtest accuracy, MIA-efficacy
and the Avg. Gap to a retrained reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.classifier.recipe import FINETUNE_DEFAULTS
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.training.distributed import Ranks
from negmerge_cli.training.options import EvalOptions, FinetuneOptions, SearchOptions
from negmerge_cli.training.sweep import GridPoint


class ClassifierFamily:
    name = "classifier"
    finetune_defaults = FINETUNE_DEFAULTS
    distributed = False  # one process; under torchrun every rank would train the same sweep

    def owns(self, model: str) -> bool:
        from negmerge_cli.classifier.models import is_classifier_name

        return is_classifier_name(model)

    def plan(self, options: FinetuneOptions) -> list[GridPoint]:
        from negmerge_cli.classifier import sweep_run

        return sweep_run.plan(options)

    def trainer(self, options: FinetuneOptions, ranks: Ranks):
        from negmerge_cli.classifier.sweep_run import ClassifierTrainer

        return ClassifierTrainer(options, ranks)

    def evaluate(self, data: Sequence[str], options: EvalOptions, json_out: Optional[Path], force: bool):
        from negmerge_cli.classifier import eval_run

        return eval_run.evaluate(data, options, json_out=json_out, force=force)

    def search(self, data: Sequence[str], options: EvalOptions, search: SearchOptions, json_out: Optional[Path],
               force: bool, also_writes: Sequence[Optional[Path]] = ()):
        from negmerge_cli.classifier import eval_run

        if any(also_writes):
            raise UsageError(f"{option('plot')} draws the CLIP forget/retain curve; a classifier's search is in "
                             f"its {option('json')} file")
        return eval_run.search_coefficient(data, options, search, json_out=json_out, force=force)
