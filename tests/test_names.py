"""Names: lazily exported names are listed by ``dir()`` (REPL completion) and all resolve; each
name means one thing and is imported one way."""

from __future__ import annotations

import ast
from pathlib import Path

import negmerge_cli

PACKAGE = Path(negmerge_cli.__file__).parent


def _trees():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent), ast.parse(path.read_text())


def test_stages_lists_its_lazy_exports():
    import negmerge_cli.stages as stages

    listed = dir(stages)
    assert {"finetune", "merge_vectors", "make_report"} <= set(listed)
    assert set(stages.__all__) <= set(listed)
    assert listed == sorted(listed)


def test_every_stage_export_resolves():
    import negmerge_cli.stages as stages

    missing = [name for name in stages.__all__ if getattr(stages, name, None) is None]
    assert not missing, missing


def test_classifier_models_lists_its_lazy_constant():
    from negmerge_cli.classifier import models

    assert "CLASSIFIER_MODELS" in dir(models)


def test_lazy_torch_lists_torch_names():
    from negmerge_cli.core.lazy import LazyModule

    assert "zeros" in dir(LazyModule("torch"))


def test_output_is_imported_one_way():
    """``from negmerge_cli.core.output import output``, never under another name."""
    renamed = [f"{path}: output as {alias.asname}" for path, tree in _trees() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module == "negmerge_cli.core.output"
               for alias in node.names if alias.name == "output" and alias.asname not in (None, "output")]
    assert not renamed, renamed


def test_one_function_called_option():
    """``option`` names an option for messages (core/errors.py); nothing else is called that."""
    defined = [str(path) for path, tree in _trees() for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "option"]
    assert defined == ["negmerge_cli/core/errors.py"], defined
