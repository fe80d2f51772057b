"""The classifier family's ``eval``: the unlearning metrics of a checkpoint, and the lambda search.

:func:`evaluate` measures accuracy on Dr, Df and Dtest and MIA-efficacy
(:mod:`negmerge_cli.classifier.metrics`), plus the Avg. Gap to ``reference`` (a retrained
checkpoint, evaluated here on the same sets, or its earlier ``eval --json``).
:func:`search_coefficient` evaluates theta = original - lambda * tau for every lambda
(the shared :class:`~negmerge_cli.arithmetic.negation.NegatedModel`; images transformed once) and picks lambda
by ``retain-bar`` (the default: reads only Dr, or the hold-out val, and Df) or ``gap`` (the oracle: reads the
retrained model and Dtest) (:mod:`negmerge_cli.classifier.search`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.checkpoint.hub_cache import pinned_id
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError, UsageError, option
from negmerge_cli.core.output import output
from negmerge_cli.results import ClassifierEvaluation, ClassifierSearchPoint, ClassifierSearchResult, ReferenceMetrics
from negmerge_cli.training.options import EvalOptions, SearchOptions


def check_evaluation(data: Sequence[str], options: EvalOptions) -> str:
    """The one dataset a classifier is evaluated on; refuses what a classifier evaluation cannot do."""
    if len(data) != 1:
        raise UsageError(f"a classifier is evaluated on exactly one {option('data')} SPEC (got {len(data)})")
    if not options.checkpoint:
        raise UsageError(f"a classifier is evaluated from {option('checkpoint')} FILE")
    if not options.forget_split:
        raise UsageError(f"a classifier evaluation needs {option('forget_split')} FORGET.json "
                         "(make one with 'negmerge split')")
    return data[0]


def evaluate(data: Sequence[str], model_options: EvalOptions, *, json_out: Optional[Path] = None,
             force: bool = False) -> ClassifierEvaluation:
    """The four metrics of ``model_options.checkpoint`` on ``data`` (one dataset) and its forget split,
    and the Avg. Gap to the reference."""
    spec = check_evaluation(data, model_options)
    with files.operation():
        _check_inputs(model_options, json_out, force)
        started = time.perf_counter()
        session = _Session(model_options, spec)
        model = session.load(model_options.checkpoint)
        metrics = session.evaluate(model, f"eval {Path(model_options.checkpoint).name}")
        val_acc = session.held_out_accuracy(model, f"eval {Path(model_options.checkpoint).name} (hold-out val)")
        seconds = time.perf_counter() - started
        reference = session.reference()
        result = ClassifierEvaluation(
            model=model_options.model, num_classes=session.num_classes, checkpoint=pinned_id(model_options.checkpoint),
            checkpoint_sha256=checkpoint_sha256(model_options.checkpoint), data=session.data.identity,
            forget_split=session.split_record, counts=session.counts, metrics=metrics, reference=reference,
            avg_gap=_gap(metrics, reference), seconds=round(seconds, 3),
            images_per_s=round(session.sets.n_images / max(seconds, 1e-9), 1), val_acc=val_acc)
        if val_acc is not None:
            output().log(f"Dval (the split's hold-out, {len(session.val):,} images, never trained on): "
                         f"accuracy {100 * val_acc:.2f}%")
        if json_out:
            files.write_json(json_out, result.to_json(), force=force)
        return result


def search_coefficient(data: Sequence[str], model_options: EvalOptions, search: SearchOptions, *,
                       json_out: Optional[Path] = None, force: bool = False) -> ClassifierSearchResult:
    """Every lambda's metrics for original - lambda * tau on ``data`` (one dataset), and the choice by
    ``search.select``."""
    from negmerge_cli.arithmetic.negation import NegatedModel, load_task_vector
    from negmerge_cli.checkpoint.kinds import check_negation_inputs
    from negmerge_cli.classifier import search as rules

    spec = check_evaluation(data, model_options)
    rules.check_select(search.select, model_options.reference is not None)
    with files.operation():
        _check_inputs(model_options, json_out, force, search.vector)
        check_negation_inputs(model_options.checkpoint, search.vector)
        started = time.perf_counter()
        session = _Session(model_options, spec)
        model = session.load(model_options.checkpoint)
        negated = NegatedModel(model, load_task_vector(search.vector), search.vector, model_options.model)
        reference = session.reference()
        points = []
        for coef in search.coefs:
            negated.set(coef)
            points.append(_search_point(session, model, coef, reference))
        choice = _choose(points, search, rules)
        result = ClassifierSearchResult(
            model=model_options.model, checkpoint=pinned_id(model_options.checkpoint), vector=pinned_id(search.vector),
            data=session.data.identity, forget_split=session.split_record, points=points, reference=reference,
            counts=session.counts, seconds=round(time.perf_counter() - started, 3), **choice)
        if json_out:
            files.write_json(json_out, result.to_json(), force=force)
        _say_choice(result, rules)
        return result


def _choose(points: list[ClassifierSearchPoint], search: SearchOptions, rules) -> dict:
    """The choice and how it was made: the rule's name, text, the metrics it read, whether it is the
    oracle, the bar, and whether the chosen lambda is the grid's last."""
    chosen = rules.select(points, search.select, search.threshold)
    limit = rules.retain_limit(points, search.threshold) if search.select == "retain-bar" else None
    return dict(select=search.select, rule=rules.describe(search.select, points), threshold=search.threshold,
                retain_limit=limit, chosen=chosen, oracle=rules.is_oracle(search.select),
                reads=rules.reads(search.select, points), at_grid_end=rules.at_grid_end(points, chosen))


def _say_choice(result: ClassifierSearchResult, rules) -> None:
    if result.oracle:
        output().log(f"lambda chosen by the oracle ({option('select')} {result.select}): it reads the retrained "
                     "model and Dtest, which a real unlearner does not hold; for benchmarking only")
    if result.chosen is None:
        output().log("no coefficient keeps the retained accuracy at the threshold; nothing chosen")
    elif result.at_grid_end:
        output().warn(rules.grid_end_warning(result.points, result.chosen))


def _search_point(session, model, coef: float, reference) -> ClassifierSearchPoint:
    from negmerge_cli.classifier.evaluate import NonFiniteOutputs

    try:
        metrics = session.evaluate(model, f"lambda {coef:g}")
    except NonFiniteOutputs as error:  # recorded, never chosen; the other lambdas still count
        output().warn(f"lambda {coef:g}: {error}")
        return ClassifierSearchPoint(coef, None, None, str(error))
    return ClassifierSearchPoint(coef, metrics, _gap(metrics, reference), val_acc=_held_out(session, model, coef))


def _held_out(session, model, coef: float) -> Optional[float]:
    """The accuracy on the split's hold-out validation set (a split with ``val_indices``); the
    retain-bar rule then reads it instead of the Dr accuracy. None without one."""
    return session.held_out_accuracy(model, f"lambda {coef:g} (hold-out val)")


def _gap(metrics, reference: Optional[ReferenceMetrics]) -> Optional[float]:
    from negmerge_cli.classifier.metrics import avg_gap

    return None if reference is None else round(avg_gap(metrics, reference.metrics), 6)


class _Session:
    """The dataset, the split, the device and the transformed images of one evaluation."""

    def __init__(self, model_options: EvalOptions, spec: str):
        from negmerge_cli.classifier.data import open_classifier_data
        from negmerge_cli.classifier.evaluate import UnlearningSets
        from negmerge_cli.classifier.split import load_forget_split
        from negmerge_cli.core.units import parse_size, resolve_device

        self.model_options = options = model_options
        self.data = open_classifier_data(spec)
        self.num_classes = _num_classes(options.num_classes, self.data, spec)
        self.split = load_forget_split(options.forget_split, self.data)
        if not self.split.forget_indices:
            raise UsageError(f"{options.forget_split}: the forget set is empty ({option('forget_split')})")
        self.split_record = {"file": str(options.forget_split),
                             "sha256": split_digest(self.split.forget_indices, self.split.held_out)}
        self.stored_reference = self._stored_reference()  # read before any evaluation: a bad file fails at once
        self.device = resolve_device(model_options.device)
        budget = parse_size(model_options.cache_memory, option("cache_memory"))
        self.val = self._held_out_images(budget)  # the split's hold-out (Dval), or None
        val_share = budget * len(self.val) // len(self.data.train) if self.val is not None else 0
        self.sets = UnlearningSets.build(self.data, self.split, model_options.batch_size, model_options.workers,
                                         budget - val_share)

    def _held_out_images(self, budget: int):
        from negmerge_cli.classifier.evaluate import SubsetImages

        if not self.split.val_indices:
            return None
        options = self.model_options
        return SubsetImages(self.data.train_eval_view(), self.split.val_indices, options.batch_size, options.workers,
                            budget * len(self.split.val_indices) // len(self.data.train), "Dval")

    @property
    def counts(self) -> dict:
        return {**self.sets.counts, **({"dval": len(self.val)} if self.val is not None else {})}

    def evaluate(self, model, description: str):
        return self.sets.evaluate(model, self.device, description, self.model_options.precision)

    def held_out_accuracy(self, model, description: str) -> Optional[float]:
        """Accuracy on the split's hold-out validation set (Dval, never trained on); None without one."""
        from negmerge_cli.classifier.evaluate import predict

        if self.val is None:
            return None
        with output().progress(description, total=len(self.val), unit="images") as advance:
            found = predict(model, self.val, self.device, self.model_options.precision, advance)
        return float(found.correct.mean())

    def load(self, path: str):
        from negmerge_cli.classifier.models import load_classifier

        return load_classifier(self.model_options.model, self.num_classes, path, self.device)

    def _stored_reference(self) -> Optional[ReferenceMetrics]:
        source = self.model_options.reference
        if source is None or Path(source).suffix.lower() != ".json":
            return None
        stored = read_evaluation(source)
        _check_same_sets(stored, self, source)
        return ReferenceMetrics(str(source), "eval_json", stored.metrics)

    def reference(self) -> Optional[ReferenceMetrics]:
        source = self.model_options.reference
        if source is None or self.stored_reference is not None:
            return self.stored_reference
        metrics = self.evaluate(self.load(source), f"reference {Path(source).name}")
        return ReferenceMetrics(pinned_id(source), "checkpoint", metrics)


def _num_classes(requested: Optional[int], data, spec: str) -> int:
    if requested is not None and requested != data.num_classes:
        raise UsageError(f"{option('num_classes')} {requested}: {spec} has {data.num_classes} classes")
    return data.num_classes


def split_digest(forget_indices: Sequence[int], held_out: Sequence[int] = ()) -> str:
    """SHA-256 of the sorted forget indices written as a compact JSON list: the same split
    gives the same digest whatever the file's formatting. A split with a hold-out (protocol salun)
    adds its sorted held-out indices (another hold-out is another Dr)."""
    import hashlib

    forget = sorted(int(i) for i in forget_indices)
    body = {"forget": forget, "held_out": sorted(int(i) for i in held_out)} if held_out else forget
    text = json.dumps(body, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    from negmerge_cli.checkpoint import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        digests = checkpoint.file_hashes()
    return next(iter(digests.values())) if len(digests) == 1 else json.dumps(digests, sort_keys=True)


def read_evaluation(path: str | Path) -> ClassifierEvaluation:
    """A classifier ``eval --json`` file, every field checked (negmerge_cli.core.schema): one line naming
    the field when it is not one."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.results.files import ClassifierEvaluationFile

    where = f"{option('reference')} {path}"
    data = schemas.load(path, error=UsageError, what="a classifier eval JSON", where=where, limit=1 << 24)
    return schemas.validate(ClassifierEvaluationFile, data, f"{where}: not a classifier eval JSON", UsageError).build()


def _check_same_sets(stored: ClassifierEvaluation, session: _Session, source: str) -> None:
    """A reference measured on another dataset or another forget set gives a meaningless gap."""
    if stored.data != session.data.identity:
        raise UsageError(f"{option('reference')} {source}: evaluated on another dataset "
                         f"({stored.data.get('dataset', '?')}, {stored.data.get('n_train', '?')} training images)")
    if stored.forget_split.get("sha256") != session.split_record["sha256"]:
        raise UsageError(f"{option('reference')} {source}: evaluated with another forget split "
                         f"({stored.forget_split.get('file')})")


def _check_inputs(options: EvalOptions, json_out: Optional[Path], force: bool, vector: Optional[str] = None) -> None:
    """Missing files and unwritable outputs fail before any evaluation; inputs are registered."""
    for path, name in ((options.checkpoint, "checkpoint"), (options.forget_split, "forget_split"),
                       (options.reference, "reference"), (vector, "vector")):
        if path is None:
            continue
        if not Path(path).exists():
            raise CheckpointError(f"{path}: does not exist ({option(name)})")
        files.register_input(path)
    if json_out is not None:
        files.check_target(Path(json_out), force=force)
