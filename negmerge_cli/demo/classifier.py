"""``negmerge demo --scenario classifier``: the standard-classifier protocol on built-in digits.

    original (all of train) and retrain (Dr only) -> k fine-tunes of the original on Df
    -> vectors -> NegMerge and baselines -> lambda by the retain-bar rule -> apply -> metrics

lambda (and the best single vector) are chosen by the retain-bar rule, which reads only Dr and Df
(what an unlearner holds); the oracle (the grid's smallest Avg. Gap to the retrained model) is shown
beside it for comparison, never used.

Df is a whole class (digit 3): with a random 10% of these easy digits, the retrained model already
scores ~99% on Df (it generalises), so there is nothing to unlearn to show. Every step is a library
stage: the original, the retrained model and the k fine-tunes are ``finetune`` sweeps (SGD with
momentum 0.9, cosine schedule, ``--augment none``), then vector, merge, the classifier eval and
search, apply.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from negmerge_cli.core import files
from negmerge_cli.results import DROPPING_METHODS

MODEL, FORGET_CLASSES = "resnet8-cifar", (3,)
SELECT, THRESHOLD = "retain-bar", 0.95  # the honest rule (negmerge_cli.classifier.search); never the oracle
METHODS = ("negmerge", "mean", "ties", "magmax")


@dataclass(frozen=True)
class ClassifierDemoSettings:
    epochs: int  # original and retrain
    # the k fine-tunes on Df: their grid, epochs x weight decay x label smoothing
    finetune_epochs: tuple[int, ...]
    finetune_wd: tuple[float, ...]
    finetune_label_smoothing: tuple[float, ...]
    coefs: tuple[float, ...]  # 0 to 2: no published grid here, and at 1 the retain bar may not bind yet
    buffers_experiment: bool  # also NegMerge with BatchNorm running statistics in the vectors

    @classmethod
    def full(cls) -> "ClassifierDemoSettings":
        return cls(12, (3, 5), (5e-4, 1e-4), (0.0, 0.1), tuple(round(i / 20, 10) for i in range(41)), True)

    @classmethod
    def quick(cls) -> "ClassifierDemoSettings":
        return cls(8, (3, 5), (5e-4,), (0.0, 0.1), tuple(i / 5 for i in range(11)), False)


def log(message: str) -> None:
    from negmerge_cli.core.output import output

    output().log(f"demo: {message}")


def run_classifier_demo(workdir: Path, settings: ClassifierDemoSettings, force: bool = False) -> dict:
    """Run every step into ``workdir``; return results.json's content (also written there)."""
    import torch

    threads = torch.get_num_threads()
    # one thread: the same table whatever the core count (the order of a multi-threaded reduction changes
    # the training's last bits, and the k fine-tunes amplify them); the tiny model barely gains from more
    torch.set_num_threads(1)
    try:
        with files.operation():
            for name in ("results.json", "tradeoff.png"):
                files.check_target(Path(workdir) / name, force=force)
            return _run(Path(workdir), settings, force)
    finally:
        torch.set_num_threads(threads)


def _run(work: Path, settings: ClassifierDemoSettings, force: bool) -> dict:
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.split import make_forget_split

    started = time.perf_counter()
    data = open_classifier_data("digits")
    split = make_forget_split(data, classes=list(FORGET_CLASSES))
    split_file = split.save(work / "forget.json", force=True)
    log(f"training the original (all {len(data.train)} images) and the retrained model (Dr only), "
        f"{settings.epochs} epochs each")
    original = _finetune_stage(work / "original", "all", None, (settings.epochs,), lr=0.05, seed=0)[0]
    retrain = _finetune_stage(work / "retrain", "retain", split_file, (settings.epochs,), lr=0.05, seed=1)[0]
    grid = (settings.finetune_epochs, settings.finetune_wd, settings.finetune_label_smoothing)
    log(f"{math.prod(map(len, grid))} fine-tunes of the original on Df")
    finetuned = _finetune_stage(work / "finetune", "forget", split_file, *grid, lr=0.01, seed=100, pretrained=original)
    timings = {"training_s": round(time.perf_counter() - started, 1)}
    retrained = _evaluate(work, retrain, "retrain", None, force)
    start = _evaluate(work, original, "original", work / "eval" / "retrain.json", force)
    rows = {"original": _row(start, 0.0), "retrain": _row(retrained, None)}
    curves, merged = {}, {}
    for method in METHODS:
        vector = work / "merged" / f"{method}.safetensors"
        merged[method] = _merge(method, finetuned, original, vector, force)
        rows[method], curves[method] = _unlearn(work, method, original, vector, settings, force)
        rows[method]["nonzero_fraction"] = merged[method].nonzero_fraction  # of all float elements, as inspect
    for method in (m for m in METHODS if m in DROPPING_METHODS):  # kept: of the elements the fine-tunes changed
        rows[method]["kept_fraction"] = merged[method].nonzero / max(1, merged["mean"].nonzero)
    rows["best_single"], curves["best_single"] = _best_single(work, original, finetuned, settings, force)
    if settings.buffers_experiment:
        vector = work / "merged" / "negmerge-buffers-include.safetensors"
        _merge("negmerge", finetuned, original, vector, force, buffers="include")
        name = "negmerge (buffers include)"
        rows[name], curves[name] = _unlearn(work, "negmerge-buffers-include", original, vector, settings, force)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    results = {"scenario": "classifier", "model": MODEL, "data": "digits", "forget_classes": list(FORGET_CLASSES),
               "k": len(finetuned), "rule": f"{SELECT} (threshold {THRESHOLD:g}; reads Dr and Df only)",
               "select": SELECT, "oracle": False, "rows": rows, "curves": curves, "timings": timings}
    with files.deferred_commits():
        _plot(curves, rows, work / "tradeoff.png", force)
        files.write_json(work / "results.json", results, force=force)
    return results


def _finetune_stage(sweep: Path, subset: str, split_file: Path | None, epochs: tuple[int, ...],
                    wd: tuple[float, ...] = (5e-4,), label_smoothing: tuple[float, ...] = (0.0,), *, lr: float,
                    seed: int, pretrained: Path | None = None) -> list[Path]:
    """One `negmerge finetune` sweep over epochs x wd x label smoothing (from scratch without
    ``pretrained``); its checkpoints. The images are not augmented: pad-4 crops of 8x8 digits lose
    the digit."""
    from negmerge_cli.stages import FinetuneOptions, Grid, finetune

    options = FinetuneOptions(
        model=MODEL, data="digits", output=sweep, pretrained=str(pretrained) if pretrained else None,
        grid=Grid(lr=[lr], epochs=list(epochs), wd=list(wd), label_smoothing=list(label_smoothing), seed=[seed]),
        batch_size=64, workers=0, device="cpu", subset=subset, forget_split=split_file, augment="none")
    return [sweep / point.file for point in finetune(options).finished]


def _model_options(checkpoint: Path, work: Path, reference: Path | None):
    from negmerge_cli.stages import EvalOptions

    return EvalOptions(model=MODEL, checkpoint=str(checkpoint), device="cpu", workers=0,
                       forget_split=str(work / "forget.json"), reference=str(reference) if reference else None)


def _evaluate(work: Path, checkpoint: Path, name: str, reference: Path | None, force: bool):
    from negmerge_cli.stages import evaluate

    return evaluate(["digits"], _model_options(checkpoint, work, reference), json_out=work / "eval" / f"{name}.json",
                    force=True)


def _merge(method: str, finetuned, original: Path, output: Path, force: bool, buffers=None):
    from negmerge_cli.stages import StreamOptions, merge_vectors

    params = {"density": 0.2} if method == "ties" else {}
    return merge_vectors(finetuned, output, method, base=original, options=StreamOptions(device="cpu", force=True),
                  buffers=buffers, **params)


def _search(work: Path, name: str, original: Path, vector: Path, settings):
    from negmerge_cli.stages import SearchOptions, search_coefficient

    options = _model_options(original, work, work / "eval" / "retrain.json")
    search = SearchOptions(str(vector), coefs=list(settings.coefs), threshold=THRESHOLD, select=SELECT)
    return search_coefficient(options, search, data=["digits"], json_out=work / "search" / f"{name}.json", force=True)


def _unlearn(work: Path, name: str, original: Path, vector: Path, settings, force: bool):
    from negmerge_cli.classifier.search import select_gap
    from negmerge_cli.stages import StreamOptions, apply_vector

    result = _search(work, name, original, vector, settings)
    coef = result.chosen.coef if result.chosen else 0.0
    unlearned = work / "unlearned" / f"{name}.safetensors"
    apply_vector(original, vector, -coef, unlearned, StreamOptions(device="cpu", force=True))
    evaluation = _evaluate(work, unlearned, name, work / "eval" / "retrain.json", force)
    oracle = select_gap(result.points)  # shown for comparison only: it reads the retrained model and Dtest
    curve = [p.to_json() for p in result.points]
    return _row(evaluation, coef) | {"lambda_at_grid_end": result.at_grid_end, "oracle_lambda": oracle.coef,
                                     "oracle_gap": oracle.avg_gap}, curve


def _best_single(work: Path, original: Path, finetuned, settings, force: bool):
    """The paper's 'best single task vector', chosen by the merges' rule (classifier.search.best_single):
    the one whose chosen lambda gives the lowest Df acc (ties: the higher Dr acc, then the first)."""
    from negmerge_cli.classifier.search import best_single
    from negmerge_cli.stages import StreamOptions, make_vectors

    folder = work / "vectors"
    make_vectors(original, finetuned, folder, StreamOptions(device="cpu", force=True))
    chosen = [(_search(work, f"single-{path.stem}", original, folder / path.name, settings).chosen, SELECT)
              for path in finetuned]
    best = best_single(chosen)
    vector = folder / finetuned[best if best is not None else 0].name
    row, curve = _unlearn(work, "best_single", original, vector, settings, force)
    return row | {"vector": vector.name}, curve


def _row(evaluation, coef) -> dict:
    return {"lambda": coef, **evaluation.metrics.to_json(), "avg_gap_points": evaluation.avg_gap}


def _plot(curves: dict, rows: dict, path: Path, force: bool) -> None:
    """The trade-off in the style of ``negmerge report --plot`` (report/plots.py): Df and Dr against
    lambda, and Dr against Df near the retain bar, with each method's lambda by the retain-bar rule
    (filled), the grid's smallest Avg. Gap (hollow) and the retrained model (the target)."""
    from negmerge_cli.report.plots import save, tradeoff_figure

    save(tradeoff_figure([classifier_panel(curves, rows)], f"{MODEL} on digits: forgetting class "
                                                             f"{', '.join(map(str, FORGET_CLASSES))}"), path, force=force)


def classifier_panel(curves: dict, rows: dict, threshold: float = 0.95):
    """The demo's curves and rows (results.json) as the shared trade-off's panel and series."""
    from negmerge_cli.report.plots import Choice, Panel, Series

    series = []
    for name, points in curves.items():
        kept = sorted((p for p in points if "df_acc" in p), key=lambda p: p["coef"])
        at = {p["coef"]: p for p in kept}
        row, choices = rows.get(name, {}), []
        for setting, key in (("", "lambda"), ("oracle", "oracle_lambda")):
            point = at.get(row.get(key))
            if point is not None:
                choices.append(Choice(point["coef"], point["df_acc"], point["dr_acc"], setting))
        series.append(Series(name, tuple((p["coef"], p["df_acc"], p["dr_acc"]) for p in kept), tuple(choices)))
    zero = [p["dr_acc"] for points in curves.values() for p in points if p["coef"] == 0 and "dr_acc" in p]
    start = zero[0] if zero else rows["original"]["dr_acc"]  # the rule's base: Dr at lambda 0
    retrain = rows["retrain"]
    panel = Panel("digit " + ", ".join(map(str, FORGET_CLASSES)), threshold * start, threshold, "Df", "Dr",
                  ("retrain (the target)", retrain["df_acc"], retrain["dr_acc"]),
                  {"": "chosen: retain bar", "oracle": "smallest Avg. Gap (oracle)"})
    return panel, series


def results_table(results: dict):
    from rich.table import Table

    table = Table(title=f"Unlearning digit 3 from {MODEL} (k = {results['k']}; lambda by {results['rule']})",
                  caption="Avg. Gap: mean |metric - retrain's| over the four metrics, in points; "
                          "oracle: the grid's smallest Avg. Gap (reads the retrained model and Dtest: for "
                          "comparison, never used to choose); +: lambda at the grid's end")
    for column in ("method", "lambda", "Dr %", "Df %", "Dtest %", "MIA-eff. %", "Avg. Gap", "oracle lambda / gap"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, row in results["rows"].items():
        gap = "-" if row["avg_gap_points"] is None else f"{row['avg_gap_points']:.2f}"
        oracle = f"{row['oracle_lambda']:g} / {row['oracle_gap']:.2f}" if "oracle_lambda" in row else "-"
        coef = "-" if row["lambda"] is None else f"{row['lambda']:g}" + ("+" if row.get("lambda_at_grid_end") else "")
        table.add_row(name, coef, *(f"{100 * row[k]:.2f}" for k in ("dr_acc", "df_acc", "dtest_acc", "mia_efficacy")),
                      gap, oracle)
    return table
