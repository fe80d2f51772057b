"""negmerge convert: research checkpoints (torch.save files, Hugging Face CLIP) to OpenCLIP safetensors."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from negmerge_cli.cli import options as opt


@opt.with_options(opt.QUIET)
def convert(
    source: Annotated[str, typer.Argument(help="A .pt/.pth file saved by the research code (whole ImageEncoder or state dict), or a Hugging Face CLIP safetensors file, folder or Hub repo id ORG/NAME[@REVISION].")],
    target: Annotated[str, typer.Option("--output", "-o", help="Output safetensors file, or a folder (existing, or ending with /): open_clip_model.safetensors, open_clip_config.json and a model card, loadable as 'local-dir:FOLDER'.")],
    model: opt.Model,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="open_clip tag or local OpenCLIP safetensors file supplying the tensors SOURCE lacks (text tower, logit scale).")] = None,
    quick_gelu: opt.QuickGelu = None,
    no_model_card: opt.NoModelCard = False,
    force: opt.Force = False,
) -> None:
    """Write SOURCE as an OpenCLIP state dict; split Q/K/V/O attention is fused back. Nothing in SOURCE is executed."""
    from negmerge_cli.convert import convert_file
    from negmerge_cli.core.output import output

    result = convert_file(source, target, model, pretrained, force, quick_gelu, model_card=not no_model_card)
    conversion = result.conversion
    taken = f", {len(conversion.filled)} from {pretrained}" if conversion.filled else ""
    output().log(f"wrote {result.output}: {len(conversion.tensors) - len(conversion.filled)} tensors from {source} "
                 f"({conversion.layout} layout){taken}")


def register(app: typer.Typer) -> None:
    from negmerge_cli.cli.examples import epilog

    app.command("convert", short_help="Convert .pt or Hugging Face CLIP checkpoints to OpenCLIP.",
                epilog=epilog("convert"))(convert)
