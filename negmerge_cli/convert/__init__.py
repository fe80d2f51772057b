"""``convert``: research checkpoints (``torch.save`` files of the task-arithmetic / NegMerge code,
Hugging Face transformers CLIP) to OpenCLIP state dicts in safetensors.

Reading (``sources``, ``unpickle``) is kept apart from the name mapping (``layouts``, ``hf_clip``)
and the fit check (``fit``), which are pure functions of names and tensors: names are mapped first,
then every value is checked against the model's skeleton, and only then combined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from negmerge_cli.checkpoint import save_state_dict
from negmerge_cli.checkpoint.folder import MODEL_CARD, check_read_back, is_folder_target, write_card
from negmerge_cli.checkpoint.hub_cache import OPEN_CLIP_WEIGHTS  # open_clip's names for a model folder
from negmerge_cli.checkpoint.provenance import describe_inputs, provenance
from negmerge_cli.convert import fit, hf_clip, layouts, linear_release
from negmerge_cli.convert.sources import read_source, sha256_of
from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError, option

OPEN_CLIP_CONFIG = "open_clip_config.json"


@dataclass
class Conversion:
    tensors: dict[str, torch.Tensor]  # OpenCLIP names, in the model's order
    layout: str  # open_clip, split-qkvo or hf-clip
    source_hashes: dict[Path, str]  # every file of SOURCE read, with its SHA-256
    filled: list[str]  # tensors taken from the pretrained model
    architecture: dict[str, str]  # metadata a later stage needs to rebuild the model (QuickGELU)
    open_clip_config: dict  # open_clip_config.json of an output folder: model and preprocessing
    linearized: dict[str, str] = field(default_factory=dict)  # a linear checkpoint's mode and expansion point


@dataclass
class ConvertResult:
    output: Path
    conversion: Conversion


def convert_checkpoint(source: str | Path, model: str, pretrained: str | None = None,
                       quick_gelu: bool | None = None) -> Conversion:
    """SOURCE's tensors under OpenCLIP names for ``model``, completed from ``pretrained`` if given.

    Every source tensor is checked against the model's skeleton before any arithmetic or model
    building. The architecture (QuickGELU or not) is the pretrained weights' unless ``quick_gelu``
    forces it; it is recorded so every later stage rebuilds the same model."""
    from negmerge_cli.clip import models

    models.check_model_name(model)
    read = read_source(source)
    skeleton = models.skeleton(model)
    expected = skeleton.state_dict()
    if linear_release.is_linear_release(read.tensors):
        return _convert_linear(read, model, pretrained, quick_gelu, skeleton, expected)
    tensors, layout = to_open_clip(read.tensors, expected, model, read.path, completing=bool(pretrained))
    reference_model = models.create_model(model, pretrained, quick_gelu=quick_gelu)
    fitted = fit.complete(tensors, expected, reference_model.state_dict() if pretrained else None)
    return Conversion(fitted.tensors, layout, read.file_hashes, fitted.filled,
                      models.architecture_metadata(reference_model), _open_clip_config(model, reference_model))


def _convert_linear(read, model: str, pretrained: str | None, quick_gelu: bool | None, skeleton,
                    expected: dict[str, torch.Tensor]) -> Conversion:
    """A release linear checkpoint: theta by position, mapped to names, fused, completed; theta0
    (its expansion point) must equal the ``pretrained`` weights, which proves the mapping."""
    from negmerge_cli.clip import models

    if not pretrained:
        raise UsageError(f"{read.path}: a linearized (tangent) checkpoint of the release; give {option('pretrained')} "
                         "(the weights it was linearized around), which checks how its parameters map to names")
    names = linear_release.release_names(skeleton)
    theta, layout = to_open_clip(linear_release.by_name(read.tensors, names, read.path, "params"), expected, model,
                                 read.path, completing=True)
    theta0, _ = to_open_clip(linear_release.by_name(read.tensors, names, read.path, "params0"), expected, model,
                             read.path, completing=True)
    reference_model = models.create_model(model, pretrained, quick_gelu=quick_gelu)
    reference = reference_model.state_dict()
    linear_release.check_expansion_point(theta0, reference, read.path, pretrained)
    fitted = fit.complete(theta, expected, reference)
    return Conversion(fitted.tensors, f"release-linear ({layout})", read.file_hashes, fitted.filled,
                      models.architecture_metadata(reference_model), _open_clip_config(model, reference_model),
                      {"finetuning_mode": "linear", "linearized_around": f"--pretrained {pretrained}"})


def _open_clip_config(name: str, model) -> dict:
    """What ``open_clip.create_model_and_transforms("local-dir:DIR")`` reads: the model's config
    (with the activation it was built with) and its preprocessing."""
    import open_clip

    from negmerge_cli.clip import models

    config = {**open_clip.get_model_config(name), "quick_gelu": models.uses_quick_gelu(model)}
    return {"model_cfg": config, "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}


def to_open_clip(state: dict[str, object], expected: dict[str, torch.Tensor], model: str, path: Path,
                 completing: bool) -> tuple[dict[str, torch.Tensor], str]:
    """SOURCE's values as OpenCLIP tensors of ``model`` (whose ``expected`` tensors may be a
    skeleton's), and SOURCE's layout: names planned, every value checked, then assembled."""
    names = list(state)
    if hf_clip.is_hf_clip(names):
        renamed, transposed = hf_clip.renamed(names)
        parts, layout = layouts.plan(renamed, path, transposed), hf_clip.HF_CLIP
    else:
        parts = layouts.plan(layouts.research_names(names), path)
        layout = layouts.layout_of(parts)
    fit.check_source(state, parts, expected, model, path, completing)
    return layouts.assemble(state, parts, expected), layout


def convert_file(source: str | Path, output: str | Path, model: str, pretrained: str | None = None,
                 force: bool = False, quick_gelu: bool | None = None, model_card: bool = True) -> ConvertResult:
    """Convert SOURCE and write OUTPUT atomically, with provenance (SOURCE's SHA-256, model, layout).

    An OUTPUT folder (existing, or ending with ``/``) gets the OpenCLIP hub layout that
    ``open_clip.create_model_and_transforms("local-dir:OUTPUT")`` loads: ``open_clip_model.safetensors``,
    ``open_clip_config.json`` and, unless ``model_card=False``, a ``README.md`` model card, renamed into
    place together. SOURCE's own files (a transformers config) describe another layout and are not copied."""
    folder = Path(output) if is_folder_target(output) else None
    source, output = Path(source), folder / OPEN_CLIP_WEIGHTS if folder else Path(output)
    extra = [folder / OPEN_CLIP_CONFIG, *([folder / MODEL_CARD] if model_card else [])] if folder else []
    pretrained_file = Path(pretrained) if pretrained and Path(pretrained).is_file() else None
    with files.operation(), files.deferred_commits():
        for path in (source, pretrained_file):
            if path is not None:
                files.register_input(path)
        for target in (output, *extra):
            files.check_target(target, force=force)  # before minutes of reading and model building
        if folder is not None:
            check_read_back(folder, OPEN_CLIP_WEIGHTS, sharded=False)
        conversion = convert_checkpoint(source, model, pretrained, quick_gelu)
        metadata = provenance(
            "convert", kind="checkpoint", model=model, layout=conversion.layout,
            source=describe_inputs(list(conversion.source_hashes), list(conversion.source_hashes.values())),
            pretrained=describe_inputs([pretrained_file], [sha256_of(pretrained_file)]) if pretrained_file else pretrained,
            **conversion.linearized,
        )
        save_state_dict(conversion.tensors, output, {**metadata, **conversion.architecture}, force=force)
        if folder is not None:
            files.write_json(folder / OPEN_CLIP_CONFIG, conversion.open_clip_config, force=force)
            if model_card:
                write_card(folder, metadata, base_model=None, library_name="open_clip", force=force)
    return ConvertResult(output, conversion)
