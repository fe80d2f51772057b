"""Every option that more than one command takes, declared once.

Single options are ``Annotated`` aliases. Groups of options (the streaming options of ``vector``,
``merge`` and ``apply``) are added to a command's signature by :func:`with_options`, which calls
the command with one options object instead of the loose values, so no command repeats them.
:func:`with_options` also checks every number a command is given against its range
(:mod:`negmerge_cli.core.limits`, the one table the library's option objects check too), so no option
declares a range of its own here.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

# -- single options ----------------------------------------------------------------------------

# merge, apply: a str, not a Path, so that a trailing "/" (an output folder) survives
OutputTarget = Annotated[str, typer.Option(
    "--output", "-o", help="Output safetensors file, or a folder (existing, or ending with /): a complete model "
                           "folder with the base's other files and a model card (docs/files.md).")]
NoModelCard = Annotated[bool, typer.Option("--no-model-card", help="With an output folder: do not write a README.md model card.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Replace existing output files.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or summaries on stderr.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Model = Annotated[str, typer.Option("--model", "-m", help="OpenCLIP model name (e.g. ViT-B-32, or the shipped negmerge-tiny).")]
Templates = Annotated[Optional[Path], typer.Option("--templates", help="Template file: one per line, {} for the class name.", dir_okay=False)]
Classnames = Annotated[Optional[Path], typer.Option("--classnames", help="Class-name file: one name per line in label order (image folders: the sorted class folders), or FOLDER<TAB>NAME lines in any order.", dir_okay=False)]
Workers = Annotated[int, typer.Option("--workers", "-j", help="DataLoader worker processes.")]
QuickGelu = Annotated[Optional[bool], typer.Option(
    "--quick-gelu/--no-quick-gelu",
    help="Force the activation; default: what the weights need (open_clip's per-tag flag, the checkpoint's "
         "metadata) or, for random init, the config's own.")]
Precision = Annotated[str, typer.Option(
    "--precision", help="fp32 (the paper's), or bf16 / fp16 autocast (faster on GPUs; numbers move).")]
Buffers = Annotated[Optional[str], typer.Option(
    "--buffers", metavar="exclude|include",
    help="BatchNorm running_mean/running_var in vectors made from checkpoints: exclude (default; the original's "
         "statistics are kept, docs/vector.md) or include (the plain difference).")]
CacheMemory = Annotated[str, typer.Option("--cache-memory", help="Memory for decoded, preprocessed images (uint8).")]
# classifier family (negmerge_cli/classifier/)
NumClasses = Annotated[Optional[int], typer.Option(
    "--num-classes", help="Classifier models: number of classes (default: the dataset's).")]
ForgetSplitFile = Annotated[Optional[Path], typer.Option(
    "--forget-split", help="Classifier data: forget/retain split JSON written by `negmerge split`.", dir_okay=False)]


# -- option groups -----------------------------------------------------------------------------


class OptionGroup:
    """Options that travel together: ``params`` become the command's options, ``build`` turns their
    values into the one object the command receives as ``target`` (or, with no target, acts on
    them before the command runs)."""

    def __init__(self, target: Optional[str], params: list[inspect.Parameter], build: Callable[..., Any]):
        self.target, self.params, self.build = target, params, build

    def only(self, *names: str) -> "OptionGroup":
        """The same group with only some of its options (the rest keep their defaults)."""
        return OptionGroup(self.target, [p for p in self.params if p.name in names], self.build)


def option_parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A keyword-only parameter ``name`` of a command's signature, which Typer reads as an option."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def with_options(*groups: OptionGroup) -> Callable[[Callable], Callable]:
    """Add each group's options to a command and pass it the built objects instead."""

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name not in {g.target for g in groups}]
        name = _COMMAND_NAMES.get(command.__name__, command.__name__)

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            from negmerge_cli.core import limits

            limits.check_parsed(name, values)
            for group in groups:
                built = group.build(**{p.name: values.pop(p.name) for p in group.params})
                if group.target:
                    values[group.target] = built
            return command(**values)

        params = own + [p for g in groups for p in g.params]
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read the new signature, not the wrapped one
        return wrapper

    return decorate


_COMMAND_NAMES = {"evaluate": "eval"}  # command functions not named as the command


def _configure_output(quiet: bool) -> None:
    from negmerge_cli.core.output import configure

    configure(quiet=quiet)


# Every command: --quiet sets up the one output object before the command runs.
QUIET = OptionGroup(None, [option_parameter("quiet", Quiet, False)], _configure_output)


def _stream_options(**values: Any):
    from negmerge_cli.stages import StreamOptions

    negated = {"hash_inputs": "no_hash", "copy_files": "no_copy_files", "model_card": "no_model_card"}
    switched_on = {name: not values.pop(flag, False) for name, flag in negated.items()}
    return StreamOptions(**values, **switched_on)


STREAMING = OptionGroup("stream", [
    option_parameter("device", Device, "auto"),
    option_parameter("dtype", Annotated[Optional[str], typer.Option(
        "--dtype", help="Output dtype: float32, float16, bfloat16 or float64 (default: the inputs').")], None),
    option_parameter("max_memory", Annotated[str, typer.Option(
        "--max-memory", help="Memory budget for tensor buffers, e.g. 512MB or 2GiB.")], "1GB"),
    option_parameter("shard_size", Annotated[Optional[str], typer.Option(
        "--shard-size", help="Split the output into shards of at most this size, with an index.")], None),
    option_parameter("missing_as_zero", Annotated[bool, typer.Option(
        "--missing-as-zero", help="Treat a tensor absent from some inputs as zero instead of failing.")], False),
    option_parameter("keep_zero", Annotated[bool, typer.Option(
        "--keep-zero", help="Also write tensors that are zero in every element (default: left out, listed in "
                            "the metadata as negmerge.zero_tensors, read back as zeros).")], False),
    option_parameter("allow_nonfinite", Annotated[bool, typer.Option(
        "--allow-nonfinite", help="Accept NaN/Inf in inputs and results instead of failing.")], False),
    option_parameter("no_hash", Annotated[bool, typer.Option(
        "--no-hash", help="Skip the SHA-256 of the inputs in the output's metadata (faster on huge merges).")],
        False),
    option_parameter("rehash", Annotated[bool, typer.Option(
        "--rehash", help="Hash every input afresh instead of trusting the digest cache (docs/files.md).")], False),
    option_parameter("no_copy_files", Annotated[bool, typer.Option(
        "--no-copy-files", help="With an output folder: do not copy the base folder's other files (config, "
                                "tokenizer...).")], False),
    option_parameter("no_model_card", NoModelCard, False),
    option_parameter("force", Force, False),
], _stream_options)

# the streaming options of a command that writes no model folder (vector)
STREAMING_TO_FILE = STREAMING.only(*(p.name for p in STREAMING.params if p.name not in {"no_copy_files", "no_model_card"}))


def _selection(include: Optional[list[str]], exclude: Optional[list[str]]):
    from negmerge_cli.arithmetic.selection import TensorSelection

    return TensorSelection(tuple(include or ()), tuple(exclude or ()))


# vector, merge, apply, inspect: which tensors to work on (negmerge_cli.arithmetic.selection.TensorSelection).
SELECTION = OptionGroup("selection", [
    option_parameter("include", Annotated[Optional[list[str]], typer.Option(
        "--include", metavar="GLOB",
        help="Only tensors whose name matches GLOB (fnmatch, e.g. 'visual.*'); repeatable; default: all.")], None),
    option_parameter("exclude", Annotated[Optional[list[str]], typer.Option(
        "--exclude", metavar="GLOB",
        help="Leave out tensors whose name matches GLOB (after --include); repeatable.")], None),
], _selection)
