"""negmerge eval: zero-shot accuracy, or the paper's search for the negation coefficient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.core.escape import json_text, number


@opt.with_options(opt.QUIET)
def evaluate(
    model: opt.Model,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint to evaluate (with --vector: the base).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="open_clip pretrained tag instead of --checkpoint.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Dataset spec (repeatable); default split: test.")] = None,
    vector: Annotated[Optional[str], typer.Option("--vector", help="Task vector: search lambda for base - lambda * vector.")] = None,
    forget: Annotated[Optional[str], typer.Option("--forget", help="Forget dataset spec for the search (default split: val).")] = None,
    retain: Annotated[Optional[str], typer.Option("--retain", help="Retain dataset spec for the search (default split: val).")] = None,
    coefs: Annotated[str, typer.Option("--coefs", help="Lambda grid START:STOP:NUM (inclusive) or a comma list.")] = "0:1:21",
    threshold: Annotated[float, typer.Option("--threshold", help="Keep retain acc >= THRESHOLD x the base model's.")] = 0.95,
    search: Annotated[str, typer.Option("--search", help="grid (the paper's), fast (bisection + local refinement), or compare (both).")] = "grid",
    refine: Annotated[int, typer.Option("--refine", help="Fast search: neighbours evaluated on each side of the bisection result.")] = 2,
    base_retain: Annotated[Optional[str], typer.Option("--base-retain", help="The retain bar's base accuracy: a fraction (0.6666) or stored accuracies FILE.json[:KEY] (the released zeroshot_accuracies.json, or eval --json); default: evaluated at lambda 0.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the forget/retain trade-off curve to this PNG.", dir_okay=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON results here instead of stdout.", dir_okay=False)] = None,
    templates: opt.Templates = None,
    classnames: opt.Classnames = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 256,
    workers: opt.Workers = 2,
    cache_memory: opt.CacheMemory = "4GiB",
    quick_gelu: opt.QuickGelu = None,
    precision: opt.Precision = "fp32",
    device: opt.Device = "auto",
    force: opt.Force = False,
    num_classes: opt.NumClasses = None,
    forget_split: opt.ForgetSplitFile = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Classifiers: the retrained model (checkpoint, evaluated too, or its eval --json) for the Avg. Gap.")] = None,
    select: Annotated[str, typer.Option("--select", help="Classifiers with --vector: retain-bar (lowest Df acc with Dr acc >= threshold x the original's) or gap (smallest Avg. Gap to --reference).")] = "retain-bar",
) -> None:
    """Zero-shot top-1/top-5/per-class recall on each --data; or, with --vector, choose lambda.

    Classifiers (--model resnet18, resnet18-cifar, ...): accuracy on Dr, Df, Dtest and MIA-efficacy
    for --forget-split, and the Avg. Gap to --reference. The coefficient search prints the chosen
    lambda alone on stdout (JSON goes to --json).
    """
    from negmerge_cli.clip.search import parse_coefs
    from negmerge_cli.stages import EvalOptions, SearchOptions, check_eval_mode, require_choice, search_coefficient
    from negmerge_cli.stages import evaluate as run_eval
    from negmerge_cli.stages.registry import family_of

    classifier = family_of(model) == "classifier"
    if not classifier:
        _refuse_classifier_options(num_classes=num_classes, forget_split=forget_split, reference=reference,
                                   select=select if select != "retain-bar" else None)
        check_eval_mode(vector, data or [], forget, retain, plot, base_retain)
    options = EvalOptions(model=model, checkpoint=checkpoint, pretrained=pretrained, templates=templates,
                          classnames=classnames, device=device, batch_size=batch_size, workers=workers,
                          cache_memory=cache_memory, quick_gelu=quick_gelu, precision=precision)
    if classifier:
        from negmerge_cli.cli.evaluate_classifier import run_classifier_eval

        run_classifier_eval(options, data=data or [], forget_split=forget_split, num_classes=num_classes,
                            reference=reference, vector=vector, coefs=parse_coefs(coefs), select=select,
                            threshold=threshold, json_out=json_out, force=force,
                            search_only=dict(forget=forget, retain=retain, plot=plot, base_retain=base_retain,
                                             search=search if search != "grid" else None))
        return
    if vector is None:
        results = run_eval(data or [], options, json_out=json_out, force=force)
        if not json_out:
            typer.echo(json_text([r.to_json() for r in results], "stdout"), nl=False)
        _print_eval_table(results)
        return
    search_options = SearchOptions(vector=vector, forget=forget, retain=retain, coefs=parse_coefs(coefs),
                                   threshold=threshold, search=search, refine=refine, base_retain=base_retain)
    result = search_coefficient(options, search_options, json_out=json_out, plot=plot, force=force)
    _print_search_table(result)
    typer.echo(f"{require_choice(result, json_out).coef:g}")


def _refuse_classifier_options(**given) -> None:
    from negmerge_cli.core.errors import UsageError, option

    for name, value in given.items():
        if value is not None:
            raise UsageError(f"{option(name)} belongs to classifier models (e.g. resnet18-cifar), not CLIP models")


def _print_eval_table(results) -> None:
    from rich.table import Table

    from negmerge_cli.core.output import output, printable

    table = Table(title="zero-shot classification")
    for column in ("dataset", "images", "acc1 %", "acc5 %", "per-class recall %", "img/s"):
        table.add_column(column, justify="right" if column != "dataset" else "left", overflow="fold")
    for r in results:
        m = r.metrics
        table.add_row(printable(r.dataset), str(r.n_images), *(number(v, scale=100) for v in
                                                                  (m.acc1, m.acc5, m.mean_per_class_recall)),
                      number(r.images_per_s, ".0f"))
    output().show(table)


def _print_search_table(result) -> None:
    from rich.table import Table

    from negmerge_cli.core.output import output

    chosen = result.chosen.coef if result.chosen else None
    table = Table(title=f"lambda search ({result.search}; retain bar {100 * result.retain_limit:.2f}%)")
    for column in ("lambda", "forget acc1 %", "retain acc1 %", ""):
        table.add_column(column, justify="right")
    for p in result.points:
        mark = "chosen" if p.coef == chosen else ("" if p.retain >= result.retain_limit else "below bar")
        table.add_row(f"{p.coef:g}", number(p.forget, scale=100), number(p.retain, scale=100), mark)
    output().show(table)
    heads = "rebuilt per coefficient" if result.heads_rebuilt else "built once"
    output().log(f"{result.evaluations} full evaluations in {result.seconds:.1f} s; heads {heads}")
    if result.agreement() is not None:
        output().log(f"fast vs grid: {json.dumps(result.agreement())}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
