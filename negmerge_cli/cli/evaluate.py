"""negmerge eval: zero-shot accuracy, or the paper's search for the negation coefficient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.errors import UsageError


def evaluate(
    model: Annotated[str, typer.Option("--model", "-m", help="OpenCLIP model name.")],
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint to evaluate (with --vector: the base).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="open_clip pretrained tag instead of --checkpoint.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Dataset spec (repeatable); default split: test.")] = None,
    vector: Annotated[Optional[str], typer.Option("--vector", help="Task vector: search lambda for base - lambda * vector.")] = None,
    forget: Annotated[Optional[str], typer.Option("--forget", help="Forget dataset spec for the search (default split: val).")] = None,
    retain: Annotated[Optional[str], typer.Option("--retain", help="Retain dataset spec for the search (default split: val).")] = None,
    coefs: Annotated[str, typer.Option("--coefs", help="Lambda grid START:STOP:NUM (inclusive) or a comma list.")] = "0:1:21",
    threshold: Annotated[float, typer.Option("--threshold", help="Keep retain acc >= THRESHOLD x the base model's.")] = 0.95,
    search: Annotated[str, typer.Option("--search", help="grid (the paper's), fast (bisection + local refinement), or compare (both).")] = "grid",
    refine: Annotated[int, typer.Option("--refine", help="Fast search: neighbours evaluated on each side of the bisection result.", min=0)] = 2,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the forget/retain trade-off curve to this PNG.", dir_okay=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON results here instead of stdout.", dir_okay=False)] = None,
    templates: Annotated[Optional[Path], typer.Option("--templates", help="Template file: one per line, {} for the class name.", dir_okay=False)] = None,
    classnames: Annotated[Optional[Path], typer.Option("--classnames", help="Class-name file: one per line, in label order.", dir_okay=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.", min=1)] = 256,
    workers: Annotated[int, typer.Option("--workers", "-j", help="DataLoader worker processes for decoding.", min=0)] = 2,
    cache_memory: Annotated[str, typer.Option("--cache-memory", help="Memory for decoded, preprocessed images (uint8).")] = "4GiB",
    device: opt.Device = "auto",
    quiet: opt.Quiet = False,
) -> None:
    """Zero-shot top-1/top-5/per-class recall on each --data; or, with --vector, choose lambda.

    The coefficient search prints the chosen lambda alone on stdout (JSON goes to --json).
    """
    from negmerge_cli.clip.search import parse_coefs
    from negmerge_cli.stages.evaluate import EvalOptions, SearchOptions, evaluate as run_eval, search_coefficient

    options = EvalOptions(model=model, checkpoint=checkpoint, pretrained=pretrained, templates=templates,
                          classnames=classnames, device=device, batch_size=batch_size, workers=workers,
                          cache_memory=cache_memory, quiet=quiet)
    if vector is None:
        if forget or retain or plot:
            raise UsageError("--forget, --retain and --plot belong to the coefficient search: add --vector")
        if not (checkpoint or pretrained):
            raise UsageError("give --checkpoint PATH (or --pretrained TAG)")
        results = run_eval(data or [], options)
        _emit(results, json_out)
        if not quiet:
            _print_eval_table(results)
        return
    if data:
        raise UsageError("--data does not go with --vector; give --forget and --retain")
    if not (forget and retain and checkpoint):
        raise UsageError("the coefficient search needs --checkpoint BASE, --vector, --forget and --retain")
    _check_writable_suffix(plot)
    search_options = SearchOptions(vector=vector, forget=forget, retain=retain, coefs=parse_coefs(coefs),
                                   threshold=threshold, search=search, refine=refine)
    result = search_coefficient(options, search_options)
    if json_out:
        _write_json(result, json_out)
    if plot:
        _draw(result, plot)
    if not quiet:
        _print_search_table(result)
    if result["chosen"] is None:
        from negmerge_cli.errors import NegmergeError

        where = f" (all points in {json_out})" if json_out else ""
        raise NegmergeError(f"no lambda in --coefs keeps retain accuracy >= {threshold:g} x the base's{where}")
    typer.echo(f"{result['chosen']['coef']:g}")


def _check_writable_suffix(plot: Optional[Path]) -> None:
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG file (name it *.png)")


def _emit(results, json_out: Optional[Path]) -> None:
    if json_out:
        _write_json(results, json_out)
    else:
        typer.echo(json.dumps(results, indent=2))


def _write_json(data, path: Path) -> None:
    from negmerge_cli.stages.finetune import write_json

    write_json(path, data)


def _draw(result: dict, path: Path) -> None:
    from negmerge_cli.clip.plot import draw_tradeoff
    from negmerge_cli.stages.evaluate import search_points

    points, chosen = search_points(result)
    title = f"{result['model']}: forget {result['forget']} / retain {result['retain']}"
    draw_tradeoff(points, result["base"]["retain_acc1"], result["threshold"], chosen, path, title)


def _print_eval_table(results) -> None:
    from rich.table import Table

    from negmerge_cli.cli.console import stderr

    table = Table(title="zero-shot classification")
    for column in ("dataset", "images", "acc1 %", "acc5 %", "per-class recall %", "img/s"):
        table.add_column(column, justify="right" if column != "dataset" else "left")
    for r in results:
        m = r["metrics"]
        table.add_row(r["dataset"], str(r["n_images"]), f"{100 * m['acc1']:.2f}", f"{100 * m['acc5']:.2f}",
                      f"{100 * m['mean_per_class_recall']:.2f}", f"{r['images_per_s']:.0f}")
    stderr.print(table)


def _print_search_table(result: dict) -> None:
    from rich.table import Table

    from negmerge_cli.cli.console import stderr

    chosen = (result["chosen"] or {}).get("coef")
    table = Table(title=f"lambda search ({result['search']}; retain bar {100 * result['retain_limit']:.2f}%)")
    for column in ("lambda", "forget acc1 %", "retain acc1 %", ""):
        table.add_column(column, justify="right")
    for p in result["points"]:
        mark = "chosen" if p["coef"] == chosen else ("" if p["retain_acc1"] >= result["retain_limit"] else "below bar")
        table.add_row(f"{p['coef']:g}", f"{100 * p['forget_acc1']:.2f}", f"{100 * p['retain_acc1']:.2f}", mark)
    stderr.print(table)
    stderr.print(f"{result['n_evaluations']} full evaluations in {result['seconds']:.1f} s; heads {result['heads']}",
                 highlight=False)
    if "agreement" in result:
        stderr.print(f"fast vs grid: {json.dumps(result['agreement'])}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
