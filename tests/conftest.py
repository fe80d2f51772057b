"""Shared fixtures; plain helpers live in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_clean_failure, make_vectors, run_cli, tricky_tensor  # noqa: F401 (re-exported)
from safetensors.torch import save_file


@pytest.fixture
def cli(capsys):
    """Run the CLI in this process (same entry point as the console script): much faster than a
    subprocess for the many small error-path checks. Returns (returncode, stdout, stderr)."""
    from types import SimpleNamespace

    from negmerge_cli.cli.app import main

    def run(*args: object) -> SimpleNamespace:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.fixture
def vectors(tmp_path: Path) -> list[Path]:
    return make_vectors(tmp_path / "vectors", 5, {"w": (60, 70), "b": (70,), "scalar": (), "empty": (0, 4)})


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A base checkpoint (with an int buffer) and three fine-tunes of it."""
    generator = torch.Generator().manual_seed(1)
    base = {
        "layer.weight": torch.randn(40, 30, generator=generator),
        "layer.bias": torch.randn(40, generator=generator),
        "position_ids": torch.arange(16),
        "norm.weight": torch.ones(30),
    }
    base_path = tmp_path / "base.safetensors"
    save_file(base, str(base_path))
    finetuned = []
    for index in range(3):
        tensors = {
            name: value + 0.01 * tricky_tensor(tuple(value.shape), generator) if value.is_floating_point() else value
            for name, value in base.items()
        }
        path = tmp_path / f"ft{index}.safetensors"
        save_file(tensors, str(path))
        finetuned.append(path)
    return base_path, finetuned


@pytest.fixture(scope="session")
def originals(tmp_path_factory) -> Path:
    """The hostile tables' real inputs (hostile.make_originals), made once per session."""
    from hostile import make_originals

    return make_originals(tmp_path_factory.mktemp("originals"))


@pytest.fixture
def ws(originals, tmp_path):
    """A private, writable copy of the originals for one hostile row (hostile.Workspace)."""
    from hostile import make_workspace

    return make_workspace(originals, tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _private_digest_cache(tmp_path_factory):
    """Tests (and the CLI subprocesses they start) keep SHA-256 digests in a cache of their own,
    never in the user's ~/.cache."""
    import os

    os.environ["NEGMERGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("digest-cache"))
