"""negmerge merge: combine task vectors with NegMerge or a baseline method.

The method options (``--density``, ``--drop-rate``...) are generated from the method registry:
a method's ``Param`` declarations are the only place they are written.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from negmerge_cli.arithmetic.methods import REGISTRY
from negmerge_cli.cli import options as opt
from negmerge_cli.cli.common import print_stream_result


def _method_options() -> opt.OptionGroup:
    """One option per distinct method parameter, named after it, with who takes it and the default."""
    params: dict[str, list] = {}
    for method in sorted(REGISTRY.values(), key=lambda m: m.name):
        for param in method.params:
            params.setdefault(param.name, []).append((method.name, param))
    options = []
    for name, users in params.items():
        first = users[0][1]
        takers = ", ".join(method for method, _ in users)
        text = f"{takers}: {first.help} Must be {first.requirement} (default {first.default})."
        flag = "--" + name.replace("_", "-")
        options.append(opt.option_parameter(name, Annotated[Optional[first.type], typer.Option(flag, help=text)], None))
    return opt.OptionGroup("method_params", options, lambda **values: {k: v for k, v in values.items() if v is not None})


METHODS_HELP = "\n\n".join(f"{name}: {cls.summary}" for name, cls in sorted(REGISTRY.items()))


@opt.with_options(_method_options(), opt.SELECTION, opt.STREAMING, opt.QUIET)
def merge(
    inputs: Annotated[list[str], typer.Argument(help="Task vectors, or fine-tuned checkpoints with --base: files, indexes, folders or Hub repo ids ORG/NAME[@REVISION].")],
    output: opt.OutputTarget,
    method: Annotated[str, typer.Option("--method", "-m", help="Merge method (listed below).")] = "negmerge",
    base: Annotated[Optional[str], typer.Option("--base", "-b", help="Form vectors on the fly as INPUT - BASE (a path or Hub repo id).")] = None,
    weight: Annotated[Optional[list[float]], typer.Option("--weight", "-w", help="Per-input weight, once per input in order (sum, mean, dare).")] = None,
    buffers: opt.Buffers = None,
    method_params=None,
    selection=None,
    stream=None,
) -> None:
    """Merge task vectors into one (NegMerge by default), streaming tensor by tensor. With -o DIR/
    the output is a folder: weights in the base's layout, the base's other files, a model card."""
    from negmerge_cli.stages import merge_vectors

    result = merge_vectors(inputs, output, method, base=base, weights=weight, options=stream, selection=selection,
                           buffers=buffers, **method_params)
    print_stream_result(result, nonzero=True)


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("merge", short_help="Merge task vectors into one (NegMerge by default).",
                epilog=epilog("merge", before="Methods:\n\n" + METHODS_HELP))(merge)
