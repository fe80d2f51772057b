"""``eval``: zero-shot accuracy of a checkpoint, and the paper's search for the negation coefficient.

``evaluate`` returns one CLIP_benchmark-shaped result per dataset. ``search_coefficient`` evaluates
theta = base - lambda * tau over a lambda grid without touching the disk again: the base and the
vector stay in memory and each lambda is written into the model's parameters in place; images are
decoded and preprocessed once (``ImageCache``); zero-shot heads are built once when the vector
leaves the text tower untouched (the case for image-encoder fine-tunes), else rebuilt per lambda.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from negmerge_cli.errors import CheckpointError, UsageError

TASK = "zeroshot_classification"


@dataclass
class EvalOptions:
    model: str
    checkpoint: Optional[str] = None  # local file; or ``pretrained`` (a tag or file)
    pretrained: Optional[str] = None
    templates: Optional[Path] = None
    classnames: Optional[Path] = None
    device: str = "auto"
    batch_size: int = 256
    workers: int = 2
    cache_memory: str = "4GiB"
    quiet: bool = False

    @property
    def weights(self) -> Optional[str]:
        return self.checkpoint or self.pretrained


def _load_model(options: EvalOptions):
    from negmerge_cli.clip import models
    from negmerge_cli.units import resolve_device

    if options.checkpoint and options.pretrained:
        raise UsageError("give --checkpoint or --pretrained, not both")
    if options.checkpoint and not Path(options.checkpoint).exists():
        raise CheckpointError(f"{options.checkpoint}: checkpoint does not exist (--checkpoint)")
    device = resolve_device(options.device)
    models.check_model_name(options.model)
    return models.create_model(options.model, options.weights, device), device


def _open_sets(specs: Sequence[str], options: EvalOptions, default_split: str):
    from negmerge_cli.clip import datasets

    if not specs:
        raise UsageError("give at least one --data")
    return [datasets.load_dataset(s, default_split, options.classnames, options.templates) for s in specs]


def evaluate(specs: Sequence[str], options: EvalOptions) -> list[dict]:
    """Top-1/top-5/mean per-class recall of one model on each dataset (test split by default)."""
    from negmerge_cli.clip import models
    from negmerge_cli.clip.evaluate import ImageCache, evaluate_cached
    from negmerge_cli.clip.zeroshot import build_head
    from negmerge_cli.units import parse_size

    budget = parse_size(options.cache_memory, "--cache-memory")
    sets = _open_sets(specs, options, "test")
    model, device = _load_model(options)
    tokenizer = models.tokenizer_for(options.model)
    transform = models.transforms_for(model, train=False)
    results = []
    for data in sets:
        started = time.perf_counter()
        cache = ImageCache.build(data, transform, budget, options.workers, options.quiet)
        head = build_head(model, tokenizer, data.classnames, data.templates)
        metrics = evaluate_cached(model, cache, head, options.batch_size, device, options.quiet, f"eval {data.label}")
        seconds = time.perf_counter() - started
        results.append({
            "dataset": data.label,
            "model": options.model,
            "pretrained": options.weights,
            "task": TASK,
            "metrics": metrics,
            "n_images": len(cache),
            "n_classes": len(data.classnames),
            "n_templates": len(data.templates),
            "seconds": round(seconds, 3),
            "images_per_s": round(len(cache) / max(seconds, 1e-9), 2),
        })
    return results


# --- coefficient search -------------------------------------------------------------------------


@dataclass
class SearchOptions:
    vector: str
    forget: str
    retain: str
    coefs: Sequence[float] = field(default_factory=lambda: [round(i / 20, 10) for i in range(21)])
    threshold: float = 0.95
    search: str = "grid"  # grid | fast | compare (fast, then the grid, and how they agree)
    refine: int = 2


class NegatedModel:
    """A model whose parameters are set to base - lambda * tau in place, for any lambda."""

    def __init__(self, model, vector: dict[str, torch.Tensor], vector_path: str, model_name: str):
        self.model = model
        params = model.state_dict()
        device = next(model.parameters()).device
        self.targets, self.base, self.tau = {}, {}, {}
        for key, tau in vector.items():
            if key not in params:
                raise CheckpointError(f"{vector_path}: vector tensor '{key}' is not in model {model_name}")
            if tau.numel() != params[key].numel():
                raise CheckpointError(
                    f"{vector_path}: vector tensor '{key}' has shape {tuple(tau.shape)}, the model's is "
                    f"{tuple(params[key].shape)}"
                )
            if not tau.is_floating_point():
                continue  # integer buffers are never part of a task vector
            self.targets[key] = params[key]
            self.base[key] = params[key].detach().clone().float()
            self.tau[key] = tau.reshape(params[key].shape).to(device, torch.float32)
        if not self.targets:
            raise CheckpointError(f"{vector_path}: no floating-point tensor of the vector matches model {model_name}")
        # heads depend on everything outside the image encoder (text tower, logit scale)
        self.touches_text = any(not k.startswith("visual.") and bool(t.any()) for k, t in self.tau.items())

    @torch.no_grad()
    def set(self, coef: float) -> None:
        for key, target in self.targets.items():
            target.copy_(self.base[key] - coef * self.tau[key])


def search_coefficient(model_options: EvalOptions, options: SearchOptions) -> dict:
    """Evaluate forget/retain accuracy over the lambda grid and pick lambda by the paper's rule."""
    from negmerge_cli.checkpoint import load_state_dict
    from negmerge_cli.clip import models, search
    from negmerge_cli.clip.evaluate import ImageCache, evaluate_cached
    from negmerge_cli.clip.progress import log
    from negmerge_cli.clip.zeroshot import build_head
    from negmerge_cli.units import parse_size

    if options.search not in ("grid", "fast", "compare"):
        raise UsageError(f"--search {options.search!r}: choose grid, fast or compare")
    if not 0 < options.threshold <= 1:
        raise UsageError(f"--threshold {options.threshold}: must be in (0, 1]")
    budget = parse_size(model_options.cache_memory, "--cache-memory")
    forget_set, retain_set = _open_sets([options.forget, options.retain], model_options, "val")
    model, device = _load_model(model_options)
    negated = NegatedModel(model, load_state_dict(options.vector), options.vector, model_options.model)
    tokenizer = models.tokenizer_for(model_options.model)
    transform = models.transforms_for(model, train=False)
    quiet = model_options.quiet
    # each half of the budget for one set
    caches = [ImageCache.build(s, transform, budget // 2, model_options.workers, quiet) for s in (forget_set, retain_set)]
    heads = None
    evaluations = []

    def accuracies(coef: float) -> search.Point:
        nonlocal heads
        negated.set(coef)
        if heads is None or negated.touches_text:
            heads = [build_head(model, tokenizer, s.classnames, s.templates) for s in (forget_set, retain_set)]
        accs = [evaluate_cached(model, c, h, model_options.batch_size, device, quiet, f"lambda {coef:g} {s.label}")["acc1"]
                for c, h, s in zip(caches, heads, (forget_set, retain_set))]
        evaluations.append(coef)
        return search.Point(coef, *accs)

    memo: dict[float, search.Point] = {}

    def evaluate_once(coef: float) -> search.Point:
        if coef not in memo:
            memo[coef] = accuracies(coef)
        return memo[coef]

    started = time.perf_counter()
    base = evaluate_once(0.0)
    runs = {}
    for kind in (["fast", "grid"] if options.search == "compare" else [options.search]):
        count_before, run_started = len(evaluations), time.perf_counter()
        if kind == "fast":
            chosen, points = search.fast_search(evaluate_once, options.coefs, base.retain, options.threshold, options.refine)
        else:
            chosen, points = search.grid_search(evaluate_once, options.coefs, base.retain, options.threshold)
        runs[kind] = {"chosen": _point_json(chosen), "points": [_point_json(p) for p in points],
                      "n_new_evaluations": len(evaluations) - count_before,
                      "n_points": len(points), "seconds": round(time.perf_counter() - run_started, 3)}
    primary = runs["grid"] if options.search == "grid" else runs["fast"]
    result = {
        "task": "coefficient_search",
        "model": model_options.model,
        "checkpoint": model_options.weights,
        "vector": options.vector,
        "forget": forget_set.label,
        "retain": retain_set.label,
        "rule": "lowest forget acc1 among coefs with retain acc1 >= threshold x base retain acc1; ties to the smallest coef",
        "threshold": options.threshold,
        "retain_limit": search.retain_limit(base.retain, options.threshold),
        "search": options.search,
        "coefs": list(options.coefs),
        "base": {"forget_acc1": base.forget, "retain_acc1": base.retain,
                 "n_forget_images": len(caches[0]), "n_retain_images": len(caches[1])},
        "points": primary["points"],
        "chosen": primary["chosen"],
        "feasible": primary["chosen"] is not None,
        "n_evaluations": len(evaluations),
        "heads": "rebuilt per coefficient (the vector changes the text tower)" if negated.touches_text
                 else "built once (the vector leaves the text tower unchanged)",
        "seconds": round(time.perf_counter() - started, 3),
        "runs": runs,
    }
    if options.search == "compare":
        result["agreement"] = _agreement(runs["fast"]["chosen"], runs["grid"]["chosen"])
    if primary["chosen"] is None:
        log("no coefficient keeps retain accuracy at the threshold; nothing chosen", quiet)
    return result


def _point_json(point) -> Optional[dict]:
    if point is None:
        return None
    return {"coef": point.coef, "forget_acc1": point.forget, "retain_acc1": point.retain}


def _agreement(fast: Optional[dict], grid: Optional[dict]) -> dict:
    if fast is None or grid is None:
        return {"same_choice": fast == grid}
    return {"same_choice": fast["coef"] == grid["coef"],
            "coef_difference": round(fast["coef"] - grid["coef"], 10),
            "forget_acc1_difference": fast["forget_acc1"] - grid["forget_acc1"],
            "retain_acc1_difference": fast["retain_acc1"] - grid["retain_acc1"]}


def search_points(result: dict):
    """The primary run's points and choice as ``search.Point`` objects (for plotting)."""
    from negmerge_cli.clip.search import Point

    to_point = lambda p: Point(p["coef"], p["forget_acc1"], p["retain_acc1"])
    return [to_point(p) for p in result["points"]], (to_point(result["chosen"]) if result["chosen"] else None)
