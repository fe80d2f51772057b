"""Shared test helpers: run the real CLI in a subprocess, make real safetensors checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


def run_cli(*args: object, cwd: Path | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``negmerge ARGS...`` as a user would run it (``python -m negmerge_cli``), output captured."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "negmerge_cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env, **kwargs,
    )


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


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A non-zero exit with exactly one ``error:`` line on stderr, naming every fragment."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tricky_tensor(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random values with many exact zeros, repeated magnitudes and both signs."""
    continuous = torch.randn(shape, generator=generator)
    discrete = torch.randint(-2, 3, shape, generator=generator).float() * 0.5  # -1 .. 1, zeros
    pick = torch.rand(shape, generator=generator) < 0.4
    return torch.where(pick, discrete, continuous)


def make_vectors(folder: Path, count: int, shapes: dict[str, tuple[int, ...]], seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> list[Path]:
    """``count`` task-vector files with the given tensor shapes."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        tensors = {name: tricky_tensor(shape, generator).to(dtype) for name, shape in shapes.items()}
        path = folder / f"tau{index}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


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
