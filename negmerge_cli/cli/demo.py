"""negmerge demo: the whole unlearning pipeline on built-in data, no network needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from negmerge_cli.cli import options as opt
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.output import output


@opt.with_options(opt.QUIET)
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Working folder: every intermediate file, results.json, the plot.", file_okay=False)] = Path("negmerge-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Reduced setting (3 fine-tunes, fewer steps), for tests.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where the pretrained tiny model is cached [default: ~/.cache/negmerge_cli].", file_okay=False)] = None,
    force: opt.Force = False,
    scenario: Annotated[str, typer.Option("--scenario", help="clip (unlearn a task from a tiny CLIP) or classifier (forget a class of digits, ResNet; the unlearning metrics).")] = "clip",
    vary: Annotated[Optional[str], typer.Option("--vary", help="clip: what the k fine-tunes differ in: seeds (one learning rate) or hyperparameters (learning rate and steps, one seed; the same k and total steps) [default: seeds].")] = None,
) -> None:
    """Unlearn digits from a tiny CLIP that knows digits and textures: fine-tune k models, merge their
    task vectors (NegMerge and baselines), choose lambda on Val, report test accuracy."""
    from negmerge_cli.demo.agreement import describe
    from negmerge_cli.demo.pipeline import DemoSettings, run_demo
    from negmerge_cli.demo.pretrain import default_cache_dir

    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"{option('workdir')} {workdir}: exists and is not a folder")
    if scenario == "classifier":
        if vary is not None:  # its k fine-tunes are a hyperparameter grid already
            raise UsageError(f"{option('vary')} is for {option('scenario')} clip")
        return _classifier_demo(workdir, quick, force)
    if scenario != "clip":
        raise UsageError(f"{option('scenario')} {scenario!r}: choose clip or classifier")
    settings = (DemoSettings.quick if quick else DemoSettings.full)(vary or "seeds")
    results = run_demo(workdir, settings, cache_dir or default_cache_dir(), force=force)
    for table in results_tables(results):
        output().show(table)
    output().log(describe(results.vectors))
    output().log(f"results: {workdir / 'results.json'}   trade-off of every method: {workdir / 'tradeoff.png'}   "
                 f"as Markdown: negmerge report {workdir}")
    _print_commands(workdir / "commands.sh")


def _classifier_demo(workdir: Path, quick: bool, force: bool) -> None:
    from negmerge_cli.demo.classifier import ClassifierDemoSettings, results_table, run_classifier_demo

    settings = ClassifierDemoSettings.quick() if quick else ClassifierDemoSettings.full()
    output().show(results_table(run_classifier_demo(workdir, settings, force=force)))
    output().log(f"results: {workdir / 'results.json'}   plot: {workdir / 'tradeoff.png'}")


def _print_commands(script: Path) -> None:
    """The fine-tune and NegMerge's chain; the baselines' commands differ only in --method."""
    lines = script.read_text().splitlines()[2:]
    shown = [line for line in lines
             if line.startswith("negmerge finetune") or "/negmerge.safetensors" in line or "/negmerge.json" in line]
    output().log(f"\nThe same pipeline with the stage commands (all of it, baselines too, in {script}):")
    output().log("\n".join(shown))


def results_tables(results) -> list[Table]:
    """The headline (the paper's rule on its grid) and the same methods at matched retain accuracy."""
    start, chance = results.start, results.chance
    caption = (f"test accuracy; chance: forget {chance.forget:.1%}, retain {chance.retain:.1%}; lambda chosen on Val: "
               f"lowest forget accuracy with retain >= {results.threshold:g} x the start's; non-zero: of all the "
               f"vector's float elements; kept (methods that drop elements): of the elements the fine-tunes changed")
    title = (f"Unlearning {results.forget_dataset} (forget) while keeping {results.retain_dataset} (retain), "
             f"k = {results.k} fine-tunes differing in their {results.vary}")
    tables = []
    for subtitle, outcomes in (("the paper's rule, lambda 0 to 1", results.methods), (results.matched_label, results.matched)):
        table = Table(title=f"{title}: {subtitle}", caption=caption)
        for column in ("method", "lambda", "forget acc", "retain acc", "non-zero", "kept"):
            table.add_column(column, justify="left" if column == "method" else "right")
        table.add_row("start (no unlearning)", "-", f"{start.forget:.1%}", f"{start.retain:.1%}", "-", "-")
        for name, row in outcomes.items():
            percent = lambda value: "-" if value is None else f"{value:.1%}"
            table.add_row(name, f"{row.coef:.2f}" if row.feasible else "none", percent(row.forget), percent(row.retain),
                          percent(row.nonzero_fraction), percent(row.kept_fraction))
        tables.append(table)
    return tables


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("demo", short_help="Run the whole unlearning pipeline on built-in data.",
                epilog=epilog("demo"))(demo)
