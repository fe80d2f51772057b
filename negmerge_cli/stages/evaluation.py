"""``eval``: a checkpoint's results on its family's measures, or the search for lambda in
base - lambda * vector, for any model family (:mod:`negmerge_cli.stages.registry`).

The CLIP family gives one CLIP_benchmark-shaped result per dataset and searches over forget and
retain sets (``clip/eval_run.py``); the classifier family gives Dr/Df/Dtest accuracy, MIA-efficacy
and the Avg. Gap on one dataset and its forget split (``classifier/eval_run.py``). A search's
forget/retain curve is drawn here (``plot``), beside the family's JSON.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.checkpoint import hub
from negmerge_cli.core import files
from negmerge_cli.core.errors import NegmergeError, UsageError, option
from negmerge_cli.stages.registry import family_for
from negmerge_cli.training.family import refuse_foreign_options
from negmerge_cli.training.options import EvalOptions, SearchOptions


def evaluate(data: Sequence[str], options: EvalOptions, *, json_out: Optional[Path] = None, force: bool = False):
    """The model's results on ``data`` (CLIP: one per dataset, test split by default; a classifier:
    one dataset, measured on its forget split); also written to ``json_out`` when given."""
    family = family_for(options.model)
    options = local_paths(options)
    refuse_foreign_options(options, family.name, options.model)
    return family.evaluate(list(data), options, json_out, force)


def search_coefficient(options: EvalOptions, search: SearchOptions, *, data: Sequence[str] = (),
                       json_out: Optional[Path] = None, plot: Optional[Path] = None, force: bool = False):
    """Every lambda's results and the one the family's rule picks (``chosen`` is None when none
    passes). CLIP searches over ``search.forget`` and ``search.retain``; a classifier over ``data``
    (one dataset) and its forget split. The JSON goes to ``json_out``, the CLIP curve to ``plot``."""
    from negmerge_cli.report.plots import check_plot_path, save, search_curve

    family = family_for(options.model)
    options, search = local_paths(options), local_paths(search)
    for given in (options, search):
        refuse_foreign_options(given, family.name, options.model)
    if plot is not None:
        check_plot_path(Path(plot))
    with files.operation():
        result = family.search(list(data), options, search, json_out, force, also_writes=[plot])
        if plot is not None:
            save(search_curve(result), Path(plot), force=force)
    return result


# the options that name a checkpoint, vector or model folder: a Hub id among them becomes a local path
_MODEL_PATHS = ("checkpoint", "pretrained", "linearized_around", "reference", "vector")


def local_paths(options):
    """``options`` (EvalOptions, SearchOptions, FinetuneOptions) with every Hub repo id among its
    model paths resolved to the local snapshot (:func:`negmerge_cli.checkpoint.hub.resolve_optional`);
    tags, files and JSON results stay as given."""
    changed = {name: hub.resolve_optional(getattr(options, name)) for name in _MODEL_PATHS
               if getattr(options, name, None)}
    return replace(options, **{name: value for name, value in changed.items() if value != getattr(options, name)})


def check_eval_mode(model: str, vector: Optional[str], data: Sequence[str], search: SearchOptions,
                    plot: Optional[Path] = None) -> None:
    """Plain evaluation and the search take different options: refuse a mix before anything runs
    (``search`` holds the search options as given, ``vector`` aside)."""
    family = family_for(model)
    refuse_foreign_options(search, family.name, model)
    if vector is not None:
        return
    searching = [name for name in ("forget", "retain", "base_retain") if getattr(search, name)]
    if searching or plot is not None:
        raise UsageError(f"{option('forget')}, {option('retain')}, {option('plot')} and {option('base_retain')} "
                         f"belong to the coefficient search: add {option('vector')}")


def require_choice(result, where: Optional[Path] = None):
    """The chosen point, or the one-line error a caller reports when there is none."""
    if result.chosen is None:
        detail = f" (all points in {where})" if where else ""
        clip = family_for(result.model).name == "clip"
        measure, base = ("retain accuracy", "the base's") if clip else ("Dr accuracy", "the original's")
        raise NegmergeError(f"no lambda in {option('coefs')} keeps {measure} >= {result.threshold:g} x {base}{detail}")
    return result.chosen


__all__ = ["EvalOptions", "SearchOptions", "check_eval_mode", "evaluate", "require_choice", "search_coefficient"]
