"""``convert``: research checkpoints (``torch.save`` files of the task-arithmetic / NegMerge code,
Hugging Face transformers CLIP) to OpenCLIP state dicts in safetensors.

Reading (``sources``, ``unpickle``) is kept apart from the name mapping (``layouts``, ``hf_clip``)
and the fit check (``fit``), which are pure functions of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from negmerge_cli import files
from negmerge_cli.checkpoint import save_state_dict
from negmerge_cli.checkpoint.provenance import describe_inputs, provenance
from negmerge_cli.convert import hf_clip, layouts
from negmerge_cli.convert.fit import fit_to_model
from negmerge_cli.convert.sources import read_source, sha256_of


@dataclass
class Conversion:
    tensors: dict[str, torch.Tensor]  # OpenCLIP names, in the model's order
    layout: str  # open_clip, split-qkvo or hf-clip
    source_hashes: dict[Path, str]  # every file of SOURCE read, with its SHA-256
    filled: list[str]  # tensors taken from the pretrained model
    architecture: dict[str, str]  # metadata a later stage needs to rebuild the model (QuickGELU)


@dataclass
class ConvertResult:
    output: Path
    conversion: Conversion


def convert_checkpoint(source: str | Path, model: str, pretrained: str | None = None,
                       quick_gelu: bool | None = None) -> Conversion:
    """SOURCE's tensors under OpenCLIP names for ``model``, completed from ``pretrained`` if given.

    The architecture (QuickGELU or not) is the pretrained weights' unless ``quick_gelu`` forces it;
    it is recorded so every later stage rebuilds the same model."""
    from negmerge_cli.clip import models

    models.check_model_name(model)
    read = read_source(source)
    tensors, layout = to_open_clip_names(read.tensors, read.path)
    reference_model = models.create_model(model, pretrained, quick_gelu=quick_gelu)
    reference = reference_model.state_dict()
    fitted = fit_to_model(tensors, reference, model, read.path, reference if pretrained else None)
    return Conversion(fitted.tensors, layout, read.file_hashes, fitted.filled,
                      models.architecture_metadata(reference_model))


def to_open_clip_names(state: dict[str, object], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    layouts.refuse_linearized(state, path)
    tensors = layouts.require_tensors(state, path)
    if hf_clip.is_hf_clip(tensors):
        return hf_clip.from_hf_clip(tensors, path), hf_clip.HF_CLIP
    return layouts.from_research(tensors, path)


def convert_file(source: str | Path, output: str | Path, model: str, pretrained: str | None = None,
                 force: bool = False, quick_gelu: bool | None = None) -> ConvertResult:
    """Convert SOURCE and write OUTPUT atomically, with provenance (SOURCE's SHA-256, model, layout)."""
    source, output = Path(source), Path(output)
    pretrained_file = Path(pretrained) if pretrained and Path(pretrained).is_file() else None
    with files.operation():
        for path in (source, pretrained_file):
            if path is not None:
                files.register_input(path)
        files.check_target(output, force=force)  # before minutes of reading and model building
        conversion = convert_checkpoint(source, model, pretrained, quick_gelu)
        metadata = provenance(
            "convert", kind="checkpoint", model=model, layout=conversion.layout,
            source=describe_inputs(list(conversion.source_hashes), list(conversion.source_hashes.values())),
            pretrained=describe_inputs([pretrained_file], [sha256_of(pretrained_file)]) if pretrained_file else pretrained,
        )
        save_state_dict(conversion.tensors, output, {**metadata, **conversion.architecture}, force=force)
    return ConvertResult(output, conversion)
