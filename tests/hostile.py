"""The machinery of the hostile-input tables (test_hostile_*.py): real inputs made once per
session, a private workspace per row, a watchdog that turns a hang into a failure, and the checks
every refused row makes.

Every refused row checks the same things: a non-zero exit, exactly one ``error:`` line naming the
file (and the tensor, field or option) at fault, no traceback, no raw control character on the
terminal, and a workspace byte-identical afterwards (no output, no temporary file, no folder, inputs
and an earlier output unchanged). Rows run the CLI in this process under the watchdog.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
from pathlib import Path
from typing import Callable

import torch
from clip_helpers import TINY, make_image_folder
from helpers import assert_clean_failure, make_vectors
from hostile_files import snapshot, special_file
from safetensors.torch import load_file, save_file

RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything that could drive a terminal


def make_originals(root: Path) -> Path:
    """Real inputs, made once: the tiny CLIP model (a checkpoint by its metadata), a task vector of
    it, an image folder, text files, small task vectors and fine-tunes for the streaming commands."""
    from negmerge_cli.clip import models

    model = models.create_model(TINY)
    models.save_checkpoint(model, root / "base.safetensors", {"format": "pt", "negmerge.kind": "checkpoint"})
    generator = torch.Generator().manual_seed(0)
    tau = {k: (0.01 * torch.randn(v.shape, generator=generator) if k.startswith("visual.") else torch.zeros_like(v))
           for k, v in models.state_dict_for_saving(model).items() if v.is_floating_point()}
    save_file(tau, str(root / "tau.safetensors"), {"format": "pt", "negmerge.kind": "task_vector"})
    make_image_folder(root / "shapes", per_class=4, size=16)
    (root / "templates.txt").write_text("a photo of a {}.\n")
    (root / "classnames.txt").write_text("square\ndisc\nstripes\n")
    make_vectors(root / "vectors", 3, {"w": (6, 5), "b": (5,)})
    return root


class Workspace:
    """A private copy of the originals for one row; every path a row uses."""

    def __init__(self, root: Path):
        self.root = root
        self.base, self.tau = root / "base.safetensors", root / "tau.safetensors"
        self.shapes, self.templates, self.classnames = root / "shapes", root / "templates.txt", root / "classnames.txt"
        self.vectors = sorted((root / "vectors").glob("*.safetensors"))
        self.a, self.b, self.c = self.vectors
        self.image = self.shapes / "green_disc" / "001.png"
        self.out = root / "out"  # holds an earlier result, which every row must leave alone
        self.earlier = self.out / "earlier.json"

    def eval(self, *args) -> list:
        return ["eval", "-m", TINY, "-c", self.base, "-j", "0", "-b", "8", *args]

    def search(self, *args, vector=None) -> list:
        return self.eval("--vector", vector or self.tau, "--forget", self.shapes, "--retain", self.shapes,
                         "--coefs", "0,1", *args)

    def finetune(self, *args, output=None) -> list:
        return ["finetune", "-m", TINY, "-d", self.shapes, "-o", output or self.out / "sweep", "--steps", "1",
                "-b", "4", "-j", "0", "--warmup-steps", "0", *args]

    def edited(self, name: str, source: Path, change: Callable[[dict], None]) -> Path:
        """A copy of checkpoint ``source`` with ``change`` applied to its tensors (metadata kept)."""
        from safetensors import safe_open

        with safe_open(str(source), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(source))
        change(tensors)
        save_file(tensors, str(self.root / name), metadata)
        return self.root / name

    def fifo(self, path: Path) -> Path:
        if path.exists():
            path.unlink()
        return special_file(path)


def make_workspace(originals: Path, tmp_path: Path) -> "Workspace":
    shutil.copytree(originals, tmp_path / "ws")
    w = Workspace(tmp_path / "ws")
    w.out.mkdir()
    w.earlier.write_text('{"earlier": true}\n')
    return w


class Hung(BaseException):
    """Raised by the watchdog; not an error the CLI knows, so it fails the test with its traceback."""


@contextlib.contextmanager
def watchdog(seconds: float):
    """SIGALRM interrupts a blocking open() or read() in this thread: a hang becomes a failure."""
    def expire(signum, frame):
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_refused(ws: "Workspace", cli, build: Callable[["Workspace"], tuple[list, list[str]]],
                   seconds: float = 60) -> str:
    """Build a row's inputs in ``ws``, run the CLI, and check a clean refusal that changed nothing;
    returns the error line."""
    with watchdog(seconds):
        args, fragments = build(ws)
        before = snapshot(ws.root)
        result = cli(*args)
    line = assert_clean_failure(result, *fragments)
    assert not RAW_CONTROL.search(result.stderr + result.stdout), repr(result.stderr)
    assert snapshot(ws.root) == before  # no output, temp file or folder; inputs and earlier output unchanged
    return line
