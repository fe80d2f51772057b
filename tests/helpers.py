"""Test helpers (not fixtures): run the real CLI in a subprocess, check a clean failure, make real
safetensors task vectors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def run_cli(*args: object, cwd: Path | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``negmerge ARGS...`` as a user would run it (``python -m negmerge_cli``), output captured."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "negmerge_cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env, **kwargs,
    )


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
