"""The library API: one function per stage; the CLI commands are thin wrappers around these.

    from negmerge_cli.stages import finetune, FinetuneOptions, Grid
    manifest = finetune(FinetuneOptions(model="ViT-B-32", data="cars:/data/cars", output=Path("runs/cars")))

Names are imported lazily, so using one stage never pays for another's imports (open_clip is slow).
Quiet mode for library callers: ``negmerge_cli.core.output.configure(quiet=True)``.
"""

from importlib import import_module

_EXPORTS = {
    # streaming arithmetic over safetensors checkpoints
    "StreamOptions": "common",
    "StreamResult": "common",
    "make_vector": "vector",
    "make_vectors": "vector",
    "write_vectors": "vector",
    "merge_vectors": "merge",
    "apply_vector": "apply",
    "inspect_checkpoint": "inspect",
    "CheckpointSummary": "inspect",
    # classifier forget/retain splits
    "make_split": "split",
    # fine-tuning and evaluation, for every model family (stages/registry.py)
    "finetune": "finetuning",
    "plan": "finetuning",
    "FinetuneOptions": "finetuning",
    "Grid": "finetuning",
    "evaluate": "evaluation",
    "search_coefficient": "evaluation",
    "require_choice": "evaluation",
    "check_eval_mode": "evaluation",
    "EvalOptions": "evaluation",
    "SearchOptions": "evaluation",
    # results as tables and figures
    "make_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    """The exported names as well (imported on first use), so that completion offers them."""
    return sorted(set(globals()) | set(__all__))
