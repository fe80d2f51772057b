"""The CLIP family's ``eval``: zero-shot accuracy of a checkpoint, and the paper's search for the
negation coefficient.

:func:`evaluate` returns one CLIP_benchmark-shaped result per dataset. :func:`search_coefficient`
evaluates theta = base - lambda * tau over a lambda grid without touching the disk again: the base
and the vector stay in memory (:class:`~negmerge_cli.arithmetic.negation.NegatedModel`); images are decoded
and preprocessed once (``ImageCache``); zero-shot heads are built once when the vector leaves the
text tower untouched (the case for image-encoder fine-tunes), else rebuilt per lambda.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.checkpoint.hub_cache import pinned_id
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError, UsageError, option
from negmerge_cli.core.output import output
from negmerge_cli.results import DatasetEvaluation, SearchPoint, SearchResult, SearchRun
from negmerge_cli.training.options import EvalOptions, SearchOptions


def check_eval_mode(vector: Optional[str], data: Sequence[str], forget: Optional[str], retain: Optional[str],
                    plot: Optional[Path], base_retain: Optional[str] = None) -> None:
    """Plain evaluation (``data``) and the search (``vector``, ``forget``, ``retain``, ``plot``,
    ``base_retain``) take different options: refuse a mix before anything runs."""
    if vector is None:
        if forget or retain or plot or base_retain:
            raise UsageError(f"{option('forget')}, {option('retain')}, {option('plot')} and {option('base_retain')} "
                             f"belong to the coefficient search: add {option('vector')}")
        return
    if data:
        raise UsageError(f"{option('data')} does not go with {option('vector')}; give {option('forget')} and "
                         f"{option('retain')}")
    if not (forget and retain):
        raise UsageError(f"the coefficient search needs {option('vector')}, {option('forget')} and {option('retain')}")


def check_search(options: SearchOptions) -> None:
    """What a CLIP search needs before anything runs: both sets, a stored base accuracy in range."""
    check_eval_mode(options.vector, (), options.forget, options.retain, None, options.base_retain)
    if options.base_retain is not None and _as_number(options.base_retain) is not None:
        _check_fraction(_as_number(options.base_retain), options.base_retain)  # a file is read with the data


# -- plain evaluation ----------------------------------------------------------------------------


def evaluate(specs: Sequence[str], options: EvalOptions, *, json_out: Optional[Path] = None,
             force: bool = False) -> list[DatasetEvaluation]:
    """Top-1/top-5/mean per-class recall of one model on each dataset (test split by default);
    the results also go to ``json_out`` when given."""
    with files.operation():
        _check_outputs([json_out], force, options, specs)
        results = [_evaluate_one(data, model, encode, options)
                   for model, encode, data in _each_dataset(specs, options, "test")]
        if json_out:
            files.write_json(json_out, [r.to_json() for r in results], force=force)
        return results


def _each_dataset(specs: Sequence[str], options: EvalOptions, default_split: str):
    sets = _open_sets(specs, options, default_split)
    model, _ = _load_model(options)
    encode = _linear_encoder(model, options)
    for data in sets:
        yield model, encode, data


def _linear_encoder(model, options: EvalOptions):
    """The linearized image encoder when the checkpoint is linear (or --linearize), else None."""
    from negmerge_cli.checkpoint import linearization
    from negmerge_cli.clip import linear_eval
    from negmerge_cli.clip.linearize import LinearizedEncoder

    if not options.checkpoint or not (options.linearize or linearization.is_linear(linearization.metadata_of(options.checkpoint))):
        if options.linearized_around and not options.linearize:
            raise UsageError(f"{option('linearized_around')} is for linear checkpoints (or with {option('linearize')})")
        return None
    around, _ = linear_eval.expansion_point(options.checkpoint, options.linearized_around)
    theta0 = linear_eval.visual_state(around, options.model)
    return LinearizedEncoder(model.visual, theta0).eval()


def _evaluate_one(data, model, encode, options: EvalOptions) -> DatasetEvaluation:
    from negmerge_cli.clip import models
    from negmerge_cli.clip.evaluate import ImageCache, evaluate_cached
    from negmerge_cli.clip.zeroshot import build_head
    from negmerge_cli.core.units import parse_size, resolve_device

    started = time.perf_counter()
    budget = parse_size(options.cache_memory, option("cache_memory"))
    cache = ImageCache.build(data, models.transforms_for(model, train=False), budget, options.workers)
    head = build_head(model, models.tokenizer_for(options.model), data.classnames, data.templates)
    metrics = evaluate_cached(model, cache, head, options.batch_size, resolve_device(options.device),
                              f"eval {data.label}", options.precision, encode=encode)
    seconds = time.perf_counter() - started
    return DatasetEvaluation(data.label, options.model, pinned_id(options.weights), metrics, len(cache), len(data.classnames),
                             len(data.templates), round(seconds, 3), round(len(cache) / max(seconds, 1e-9), 2),
                             precision=options.precision, quick_gelu=models.uses_quick_gelu(model), split_source=data.split_source,
                             classes=data.class_mapping)


def _load_model(options: EvalOptions):
    from negmerge_cli.clip import models
    from negmerge_cli.core.units import resolve_device

    if options.checkpoint and not Path(options.checkpoint).exists():
        raise CheckpointError(f"{options.checkpoint}: checkpoint does not exist ({option('checkpoint')})")
    device = resolve_device(options.device)
    models.check_model_name(options.model)
    return models.create_model(options.model, options.weights, device, options.quick_gelu), device


def _open_sets(specs: Sequence[str], options: EvalOptions, default_split: str):
    from negmerge_cli.clip import datasets

    if not specs:
        raise UsageError(f"give at least one {option('data')}")
    return [datasets.load_dataset(s, default_split, options.classnames, options.templates) for s in specs]


def _check_outputs(paths: Sequence[Optional[Path]], force: bool, options: EvalOptions, specs: Sequence[str],
                   vector: Optional[str] = None, base_retain: Optional[str] = None) -> None:
    """Fail on an output that cannot be written (it exists, or it is one of the inputs) before
    minutes of evaluation, not after: the inputs are registered before they are read."""
    from negmerge_cli.clip import datasets

    stored_accuracies = _split_key(base_retain)[0] if base_retain and _as_number(base_retain) is None else None
    for path in (options.checkpoint, options.pretrained, options.templates, options.classnames, vector,
                 stored_accuracies):
        if path:
            files.register_input(path)
    for spec in specs:
        datasets.protect(datasets.parse_spec(spec))
    for path in paths:
        if path is not None:
            files.check_target(Path(path), force=force)


# -- coefficient search --------------------------------------------------------------------------


def search_coefficient(model_options: EvalOptions, options: SearchOptions, *, json_out: Optional[Path] = None,
                       force: bool = False, also_writes: Sequence[Optional[Path]] = ()) -> SearchResult:
    """Evaluate forget/retain accuracy over the lambda grid and pick lambda by the paper's rule.

    The result (every point, the choice or its absence) goes to ``json_out`` when given;
    :meth:`SearchResult.chosen` is None when no lambda keeps the retain bar. ``also_writes``: the
    caller's other outputs (a plot), checked with ``json_out`` before any evaluation."""
    with files.operation():
        check_search(options)
        _check_outputs([json_out, *also_writes], force, model_options, [options.forget, options.retain],
                       options.vector, options.base_retain)
        result = _Search(model_options, options).run()
        if json_out:
            files.write_json(json_out, result.to_json(), force=force)
        if result.chosen is None:
            output().log("no coefficient keeps retain accuracy at the threshold; nothing chosen")
        return result


def search_coefficients(model_options: EvalOptions, grids: Sequence[SearchOptions], *,
                        json_outs: Optional[Sequence[Optional[Path]]] = None,
                        also_writes: Sequence[Optional[Path]] = (), force: bool = False) -> list[SearchResult]:
    """Several searches of one vector on the same sets (e.g. the paper's grid and a longer one): one
    model, one image cache, and every lambda evaluated once for all of them. Each result is what
    :func:`search_coefficient` gives for its options; ``n_evaluations`` counts its own points (lambda 0 included)."""
    json_outs = list(json_outs or [None] * len(grids))
    same = {(o.vector, o.forget, o.retain, o.base_retain) for o in grids}
    if len(same) != 1 or len(json_outs) != len(grids):
        raise UsageError("the searches must share the vector, the forget and retain sets and the retain base")
    with files.operation():
        for options in grids:
            check_search(options)
        first = grids[0]
        _check_outputs([*json_outs, *also_writes], force, model_options, [first.forget, first.retain], first.vector,
                       first.base_retain)
        search = _Search(model_options, grids[0])
        results = []
        for options, json_out in zip(grids, json_outs):
            search.options = options
            result = search.run()
            result.evaluations = len({p.coef for run in result.runs.values() for p in run.points} | {0.0})
            if json_out:
                files.write_json(json_out, result.to_json(), force=force)
            results.append(result)
        return results


class _Search:
    """One search: the model, the cached images, and a memo of every lambda evaluated."""

    def __init__(self, model_options: EvalOptions, options: SearchOptions):
        from negmerge_cli.arithmetic.negation import NegatedModel, load_task_vector
        from negmerge_cli.checkpoint.kinds import check_negation_inputs
        from negmerge_cli.clip import models
        from negmerge_cli.clip.evaluate import ImageCache
        from negmerge_cli.core.units import parse_size

        self.model_options, self.options = model_options, options
        if Path(model_options.weights).exists():  # a file (not a tag): a checkpoint, and not the vector again
            check_negation_inputs(model_options.weights, options.vector,
                                  "checkpoint" if model_options.checkpoint else "pretrained")
        budget = parse_size(model_options.cache_memory, option("cache_memory"))
        self.sets = _open_sets([options.forget, options.retain], model_options, "val")
        self.stored_base = (None if options.base_retain is None
                            else stored_base_retain(options.base_retain, self.sets[1].label))
        self.model, self.device = _load_model(model_options)
        vector = load_task_vector(options.vector)
        self.negated = NegatedModel(self.model, vector, options.vector, model_options.model)
        self.tokenizer = models.tokenizer_for(model_options.model)
        transform = models.transforms_for(self.model, train=False)
        # each half of the budget for one set
        self.caches = [ImageCache.build(s, transform, budget // 2, model_options.workers) for s in self.sets]
        self.heads = None
        self.memo: dict[float, SearchPoint] = {}
        self.linear, self.linearized_around = self._one_pass(vector)

    def _one_pass(self, vector):
        """For a linear vector (or --linearize): the whole lambda grid from one jvp pass per set,
        around the base, which must be the vector's expansion point."""
        from negmerge_cli.checkpoint import linearization
        from negmerge_cli.clip import linear_eval
        from negmerge_cli.clip.zeroshot import build_head

        model_options, options = self.model_options, self.options
        if not (model_options.linearize or linearization.is_linear(linearization.metadata_of(options.vector))):
            return None, None
        if not model_options.checkpoint:
            raise UsageError(f"a linearized search needs the expansion point as {option('checkpoint')} FILE")
        around = linear_eval.base_as_expansion_point(options.vector, model_options.checkpoint,
                                                     model_options.linearize)
        self.heads = [build_head(self.model, self.tokenizer, s.classnames, s.templates) for s in self.sets]
        return (linear_eval.OnePassSearch(self.model, vector, options.vector, self.caches, model_options.batch_size,
                                          self.device), around)

    def accuracies(self, coef: float) -> SearchPoint:
        from negmerge_cli.clip.evaluate import evaluate_cached
        from negmerge_cli.clip.zeroshot import build_head

        if coef not in self.memo and self.linear is not None:
            self.memo[coef] = SearchPoint(coef, *(self.linear.accuracy(i, coef, h) for i, h in enumerate(self.heads)))
        if coef not in self.memo:
            self.negated.set(coef)
            if self.heads is None or self.negated.touches_text:
                self.heads = [build_head(self.model, self.tokenizer, s.classnames, s.templates) for s in self.sets]
            accs = [evaluate_cached(self.model, c, h, self.model_options.batch_size, self.device,
                                    f"lambda {coef:g} {s.label}", self.model_options.precision).acc1
                    for c, h, s in zip(self.caches, self.heads, self.sets)]
            self.memo[coef] = SearchPoint(coef, *accs)
        return self.memo[coef]

    def run(self) -> SearchResult:
        from negmerge_cli.clip import models, search

        options, started = self.options, time.perf_counter()
        base = self.accuracies(0.0)
        if self.stored_base is None:
            base_retain, source = base.retain, "evaluated (lambda = 0)"
        else:
            base_retain, source = self.stored_base
        kinds = ["fast", "grid"] if options.search == "compare" else [options.search]
        runs = {kind: self._run_one(kind, base_retain) for kind in kinds}
        forget, retain = self.sets
        return SearchResult(
            model=self.model_options.model, checkpoint=pinned_id(self.model_options.weights),
            vector=pinned_id(options.vector),
            forget=forget.label, retain=retain.label, threshold=options.threshold,
            retain_limit=search.retain_limit(base_retain, options.threshold), search=options.search,
            base_retain=base_retain, base_retain_source=source, precision=self.model_options.precision,
            quick_gelu=models.uses_quick_gelu(self.model),
            coefs=list(options.coefs), base=base, n_forget_images=len(self.caches[0]),
            n_retain_images=len(self.caches[1]), runs=runs, evaluations=len(self.memo),
            heads_rebuilt=self.negated.touches_text, seconds=round(time.perf_counter() - started, 3),
            split_sources={"forget": forget.split_source, "retain": retain.split_source},
            linearized_around=self.linearized_around,
            forward_passes=self.linear.forward_passes if self.linear else 2 * len(self.memo))

    def _run_one(self, kind: str, base_retain: float) -> SearchRun:
        from negmerge_cli.clip import search

        options, count_before, started = self.options, len(self.memo), time.perf_counter()
        if kind == "fast":
            chosen, points = search.fast_search(self.accuracies, options.coefs, base_retain, options.threshold,
                                                options.refine)
        else:
            chosen, points = search.grid_search(self.accuracies, options.coefs, base_retain, options.threshold)
        return SearchRun(chosen, points, len(self.memo) - count_before, round(time.perf_counter() - started, 3))


def stored_base_retain(value: str, retain_label: str) -> tuple[float, str]:
    """The retain bar's base from ``--base-retain``: a fraction (``0.6666``), or a JSON file of stored
    accuracies, ``FILE[:KEY]``: the released code's ``zeroshot_accuracies.json`` (``{"ImageNetVal":
    0.6666, ...}``; KEY names the entry) or this tool's ``eval --json`` list (KEY, else the retain
    set's label, names the dataset). Returns the fraction and where it came from."""
    number = _as_number(value)
    if number is not None:
        return _check_fraction(number, value), value
    path, key = _split_key(value)
    table, from_eval = _read_accuracies(path)
    fraction = _pick_accuracy(table, from_eval, key, retain_label, path)
    where = f"{path}:{key}" if key else str(path)
    return _check_fraction(fraction, where), where


def _as_number(value) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def _split_key(value: str) -> tuple[Path, Optional[str]]:
    if Path(value).is_file() or ":" not in value:
        return Path(value), None
    path, key = value.rsplit(":", 1)
    return Path(path), key


def _read_accuracies(path: Path) -> tuple[dict[str, float], bool]:
    """The stored accuracies by name, and whether they came from an ``eval --json`` list; every
    field checked (negmerge_cli.core.schema), one line naming the one at fault."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.results.files import StoredEvaluation

    where = f"{option('base_retain')} {path}"
    stored = schemas.load(path, error=UsageError, what="a file of accuracies", where=where, limit=1 << 20)
    if isinstance(stored, list):  # eval --json: [{"dataset": ..., "metrics": {"acc1": ...}}, ...]
        entries = schemas.validate(list[StoredEvaluation], stored, where, UsageError)
        return {entry.dataset: entry.metrics.acc1 for entry in entries}, True
    return schemas.validate(dict[str, float], stored, where, UsageError), False  # {"ImageNetVal": 0.6666, ...}


def _pick_accuracy(table: dict[str, float], from_eval: bool, key: Optional[str], retain_label: str,
                   path: Path) -> float:
    default = retain_label if from_eval and retain_label in table else None
    key = key or default or (next(iter(table)) if len(table) == 1 else None)
    if key is None or key not in table:
        names = ", ".join(str(k) for k in list(table)[:12]) or "none"
        wanted = f"no entry '{key}'" if key else "name the entry as FILE:KEY"
        raise UsageError(f"{option('base_retain')} {path}: {wanted} (entries: {names})")
    return table[key]


def _check_fraction(value: float, where: str) -> float:
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"{option('base_retain')} {where}: {value!r} is not an accuracy fraction in (0, 1] "
                         "(e.g. 0.6666, not 66.66)")
    return value

