"""negmerge eval: zero-shot accuracy, or the paper's search for the negation coefficient."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt
from negmerge_cli.cli.defaults import default
from negmerge_cli.core.escape import json_text
from negmerge_cli.training.options import EvalOptions as Options
from negmerge_cli.training.options import SearchOptions


@opt.with_options(opt.QUIET)
def evaluate(
    model: opt.Model,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint to evaluate (with --vector: the base): a file, folder or Hub repo id ORG/NAME[@REVISION].")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="open_clip pretrained tag instead of --checkpoint.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Dataset spec (repeatable); default split: test.")] = None,
    vector: Annotated[Optional[str], typer.Option("--vector", help="Task vector (a path or Hub repo id): search lambda for base - lambda * vector.")] = None,
    forget: Annotated[Optional[str], typer.Option("--forget", help="Forget dataset spec for the search (default split: val).")] = None,
    retain: Annotated[Optional[str], typer.Option("--retain", help="Retain dataset spec for the search (default split: val).")] = None,
    coefs: Annotated[Optional[str], typer.Option("--coefs", help="Lambda grid START:STOP:NUM (inclusive) or a comma list [default: 0:1:21, the paper's].")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Keep retain acc >= THRESHOLD x the base model's.")] = default(SearchOptions, "threshold"),
    search: Annotated[str, typer.Option("--search", help="grid (the paper's), fast (bisection + local refinement), or compare (both).")] = default(SearchOptions, "search"),
    refine: Annotated[int, typer.Option("--refine", help="Fast search: neighbours evaluated on each side of the bisection result.")] = default(SearchOptions, "refine"),
    base_retain: Annotated[Optional[str], typer.Option("--base-retain", help="The retain bar's base accuracy: a fraction (0.6666) or stored accuracies FILE.json[:KEY] (the released zeroshot_accuracies.json, or eval --json); default: evaluated at lambda 0.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the forget/retain trade-off curve to this PNG.", dir_okay=False)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON results here instead of stdout.", dir_okay=False)] = None,
    templates: opt.Templates = None,
    classnames: opt.Classnames = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = default(Options, "batch_size"),
    workers: opt.Workers = default(Options, "workers"),
    cache_memory: opt.CacheMemory = default(Options, "cache_memory"),
    quick_gelu: opt.QuickGelu = None,
    linearized_around: Annotated[Optional[str], typer.Option("--linearized-around", help="A linear checkpoint's expansion point theta0 [default: the base recorded beside it, checked by SHA-256].")] = None,
    linearize: Annotated[bool, typer.Option("--linearize", help="Evaluate linearized around --linearized-around (plain eval) or around --checkpoint (search), whatever the files record.")] = False,
    precision: opt.Precision = default(Options, "precision"),
    device: opt.Device = default(Options, "device"),
    force: opt.Force = False,
    num_classes: opt.NumClasses = None,
    forget_split: opt.ForgetSplitFile = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Classifiers: the retrained model (checkpoint, evaluated too, or its eval --json) for the Avg. Gap.")] = None,
    select: Annotated[str, typer.Option("--select", help="Classifiers with --vector: retain-bar (the default, reads only Dr (or the split's hold-out) and Df: lowest Df acc with retained acc >= threshold x the original's) or gap (the oracle: smallest Avg. Gap to --reference, which reads Dtest and the retrained model; benchmarking only).")] = default(SearchOptions, "select"),
) -> None:
    """Zero-shot top-1/top-5/per-class recall on each --data; or, with --vector, choose lambda.

    Classifiers (--model resnet18, resnet18-cifar, ...): accuracy on Dr, Df, Dtest and MIA-efficacy
    for --forget-split, and the Avg. Gap to --reference. The coefficient search prints the chosen
    lambda alone on stdout (JSON goes to --json).
    """
    from negmerge_cli.cli.eval_tables import show_evaluation, show_search
    from negmerge_cli.clip.search import parse_coefs
    from negmerge_cli.stages import check_eval_mode, require_choice, search_coefficient
    from negmerge_cli.stages import evaluate as run_eval

    options = Options(model=model, checkpoint=checkpoint, pretrained=pretrained, templates=templates,
                      classnames=classnames, device=device, batch_size=batch_size, workers=workers,
                      cache_memory=cache_memory, quick_gelu=quick_gelu, precision=precision,
                      linearized_around=linearized_around, linearize=linearize,
                      forget_split=forget_split, num_classes=num_classes, reference=reference)
    search_options = SearchOptions(vector=vector or "", forget=forget, retain=retain, coefs=default(SearchOptions, "coefs") if coefs is None else parse_coefs(coefs),
                                   threshold=threshold, search=search, refine=refine, base_retain=base_retain,
                                   select=select)
    check_eval_mode(model, vector, data or [], search_options, plot)
    if vector is None:
        result = run_eval(data or [], options, json_out=json_out, force=force)
        if not json_out:
            found = [r.to_json() for r in result] if isinstance(result, list) else result.to_json()
            typer.echo(json_text(found, "stdout"), nl=False)
        show_evaluation(result)
        return
    result = search_coefficient(options, search_options, data=data or [], json_out=json_out, plot=plot, force=force)
    show_search(result)
    typer.echo(f"{require_choice(result, json_out).coef:g}")


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("eval", short_help="Measure accuracy, or choose the negation coefficient lambda.",
                epilog=epilog("eval"))(evaluate)
