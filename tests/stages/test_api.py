"""The library API is what the README says, the CLI starts without torch, and errors stay one line."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading

import torch
from helpers import assert_clean_failure, run_cli
from safetensors.torch import load_file, save_file


def test_stages_export_functions_with_docstrings():
    from negmerge_cli import stages

    for name in ("finetune", "evaluate", "search_coefficient", "make_vector", "make_vectors", "merge_vectors",
                 "apply_vector", "inspect_checkpoint"):
        function = getattr(stages, name)
        assert inspect.isfunction(function), name
        assert function.__doc__, name
    from negmerge_cli.stages import finetune  # the function, not a module
    assert callable(finetune) and not inspect.ismodule(finetune)


def test_merge_and_apply_from_python(tmp_path):
    from negmerge_cli.stages import StreamOptions, apply_vector, merge_vectors

    base = {"w": torch.randn(8, 4), "steps": torch.arange(3)}
    save_file(base, str(tmp_path / "base.safetensors"))
    paths = []
    for i, delta in enumerate((0.5, 1.5)):
        save_file({"w": base["w"] + delta, "steps": base["steps"]}, str(tmp_path / f"ft{i}.safetensors"))
        paths.append(tmp_path / f"ft{i}.safetensors")
    options = StreamOptions(device="cpu")
    merged = merge_vectors(paths, tmp_path / "tau.safetensors", "negmerge", base=tmp_path / "base.safetensors",
                           options=options)
    assert merged.nonzero_fraction == 1.0
    apply_vector(tmp_path / "base.safetensors", tmp_path / "tau.safetensors", -1.0, tmp_path / "out.safetensors",
                 options)
    out = load_file(str(tmp_path / "out.safetensors"))
    torch.testing.assert_close(out["w"], base["w"] - 1.0, rtol=0, atol=1e-6)
    assert torch.equal(out["steps"], base["steps"])


def test_library_errors_name_python_keywords(tmp_path):
    import pytest

    from negmerge_cli.core.errors import UsageError
    from negmerge_cli.stages import StreamOptions

    with pytest.raises(UsageError, match="^max_memory "):
        StreamOptions(max_memory="lots")


def test_cli_starts_without_torch():
    code = "import sys, negmerge_cli.cli.app; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_debug_variable_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.safetensors"
    assert_clean_failure(run_cli("inspect", missing), str(missing))
    env = {**os.environ, "NEGMERGE_DEBUG": "1"}
    debug = subprocess.run([sys.executable, "-m", "negmerge_cli", "inspect", str(missing)], capture_output=True,
                           text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "error:" in debug.stderr


def test_overflowing_result_is_refused_before_the_rename(tmp_path):
    save_file({"w": torch.ones(4)}, str(tmp_path / "base.safetensors"))
    save_file({"w": torch.full((4,), 2.0)}, str(tmp_path / "tau.safetensors"))  # not the base's tensors again
    out = tmp_path / "out.safetensors"
    result = run_cli("apply", "--base", tmp_path / "base.safetensors", "--vector", tmp_path / "tau.safetensors",
                     "--scale", "1e300", "-o", out, "--device", "cpu")
    assert_clean_failure(result, str(out), "'w'", "--allow-nonfinite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "tau.safetensors"]  # no temp left


def test_out_dir_is_all_or_nothing(tmp_path):
    save_file({"w": torch.zeros(4)}, str(tmp_path / "base.safetensors"))
    save_file({"w": torch.ones(4)}, str(tmp_path / "good.safetensors"))
    save_file({"w": torch.full((4,), float("nan"))}, str(tmp_path / "bad.safetensors"))
    result = run_cli("vector", "--base", tmp_path / "base.safetensors", "--out-dir", tmp_path / "vectors",
                     tmp_path / "good.safetensors", tmp_path / "bad.safetensors", "--device", "cpu")
    assert_clean_failure(result, "bad.safetensors")
    assert not (tmp_path / "vectors").exists()  # the good vector and the folder went with the failure


class _RecordingOutput:
    """The real Output on a terminal console (Rich draws the bar into a buffer), recording each bar's
    description, total and the bytes it was advanced by."""

    def __init__(self):
        import io

        from rich.console import Console

        from negmerge_cli.core.output import Output

        self.output = Output(console=Console(file=io.StringIO(), force_terminal=True, width=200))
        self.bars = []

    def install(self, monkeypatch) -> None:
        from contextlib import contextmanager

        from negmerge_cli.core import output

        real = self.output.progress

        @contextmanager
        def progress(description, total, unit="items"):
            bar = {"description": description, "total": total, "done": 0}
            self.bars.append(bar)
            with real(description, total, unit) as advance:
                lock = threading.Lock()  # the hasher threads and the main thread advance the same bar

                def counted(n, note=None):
                    with lock:
                        bar["done"] += n
                    advance(n, note)

                yield counted

        monkeypatch.setattr(self.output, "progress", progress)
        monkeypatch.setattr(output, "_current", self.output)


def test_a_merge_bar_counts_the_hashing_it_waits_for(tmp_path, monkeypatch):
    """With nothing cached, a merge hashes its inputs beside the stream and waits for them: the bar
    says so and runs to its end over the reads and the hashing, not to 100% before the wait."""
    from negmerge_cli.checkpoint import digests
    from negmerge_cli.stages import StreamOptions, merge_vectors

    monkeypatch.setenv(digests.ENV_VAR, str(tmp_path / "cache"))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"tau{i}.safetensors")
        save_file({"w": torch.randn(64, 32), "b": torch.randn(32)}, str(paths[-1]))
    recorder = _RecordingOutput()
    recorder.install(monkeypatch)
    merge_vectors(paths, tmp_path / "cold.safetensors", "negmerge", options=StreamOptions(device="cpu"))
    merge_vectors(paths, tmp_path / "warm.safetensors", "negmerge", options=StreamOptions(device="cpu"))
    cold, warm = [bar for bar in recorder.bars if bar["description"].startswith("merge")]
    tensor_bytes = (64 * 32 + 32) * 4 * 3
    assert cold["description"].endswith("+ hashing 3 input files")
    assert cold["total"] == cold["done"] == tensor_bytes + sum(p.stat().st_size for p in paths)
    assert "hashing" not in warm["description"] and warm["total"] == warm["done"] == tensor_bytes
