"""Hostile inputs to every command, one table row per case, grouped in the eight groups numbered below.

test_hostile_inputs.py covers malformed checkpoint files in every checkpoint-reading role; this file
covers the rest: outputs that are inputs (1), temporary files and partial outputs (2), special files
in every other place a user's file is read (3), malformed sweep JSON (4), non-finite and out-of-range
numbers (5), what ``eval`` and ``finetune`` are given as weights (6), tracebacks (7) and terminal
safety (8).

Every refused row checks the same things: a non-zero exit, exactly one ``error:`` line naming the
file (and the tensor or option) at fault, no traceback, no raw control character on the terminal,
and a workspace byte-identical afterwards (no output, no temporary file, no folder, inputs and an
earlier output unchanged). Rows run the CLI in this process under a watchdog (a hang fails the row
instead of stalling the suite); rows about signals, rlimits and start-up run a real subprocess with
a timeout.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from clip_helpers import TINY
from helpers import assert_clean_failure, run_cli
from hostile import RAW_CONTROL, Workspace, assert_refused
from hostile_files import snapshot
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow
WIDE = "visual.transformer.resblocks.0.mlp.c_fc.weight"  # (256, 64) in the tiny model: not square
POINT = "lr1e-05_st1_wd0.1_ls0_seed0_noaug"  # the one grid point of Workspace.finetune()


def transpose(name: str) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        tensors[name] = tensors[name].t().contiguous()
    return change


def nan_in(name: str) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = float("nan")
    return change


def planted_sweep(w: Workspace, planted: str) -> Path:
    """A sweep folder as an earlier run left it (lock, identity, base), with a FIFO at ``planted``."""
    from negmerge_cli.clip.sweep_run import sweep_identity
    from negmerge_cli.training.options import FinetuneOptions

    sweep = w.out / "sweep"
    sweep.mkdir()
    (sweep / ".lock").touch()
    identity = sweep_identity(FinetuneOptions(TINY, str(w.shapes), sweep, batch_size=4, warmup_steps=0))
    (sweep / "sweep.json").write_text(json.dumps({"identity": identity}))
    shutil.copy(w.base, sweep / "base.safetensors")
    return w.fifo(sweep / planted)


def hard_link(w: Workspace, target: Path) -> Path:
    os.link(target, w.root / "hardlink")
    return w.root / "hardlink"


def sym_link(w: Workspace, target: Path) -> Path:
    (w.root / "symlink").symlink_to(target)
    return w.root / "symlink"


def corrupt_image(w: Workspace) -> Path:
    w.image.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return w.image


def escaped_name(w: Workspace) -> Path:
    """A file whose name holds an escape sequence, a carriage return and a bell."""
    path = w.root / "bad\x1b[31m\r\x07.safetensors"
    path.write_bytes(b"\x08\0\0\0\0\0\0\0{}garbage")
    return path


Row = Callable[[Workspace], tuple[list, list[str]]]  # -> (CLI arguments, fragments of the error line)
CONTROL_NAME = r"bad\x1b[31m\x0d\x07.safetensors"  # how the error line must show escaped_name

ROWS: dict[str, Row] = {
    # 1. a write can never destroy an input: every output path that is (or links to) an input
    "1-merge-output-is-an-input": lambda w: (["merge", "-o", w.a, "--force", w.a, w.b], [str(w.a), "also an input"]),
    "1-merge-output-symlink-to-input": lambda w: (["merge", "-o", sym_link(w, w.b), "--force", w.a, w.b],
                                                  ["symlink", "also an input"]),
    "1-merge-output-hardlink-to-input": lambda w: (["merge", "-o", hard_link(w, w.b), "--force", w.a, w.b],
                                                   ["hardlink", "also an input"]),
    "1-vector-out-dir-holds-an-input": lambda w: (["vector", "-b", w.a, "--out-dir", w.b.parent, "--force", w.c],
                                                  [str(w.c), "also an input"]),
    "1-apply-output-is-the-base": lambda w: (["apply", "-b", w.a, "-v", w.b, "-s", "-1", "-o", w.a, "--force"],
                                             [str(w.a), "also an input"]),
    "1-apply-output-is-the-vector-by-symlink": lambda w: (
        ["apply", "-b", w.a, "-v", w.b, "-s", "-1", "-o", sym_link(w, w.b), "--force"], ["symlink", "also an input"]),
    "1-eval-json-is-the-checkpoint": lambda w: (w.eval("-d", w.shapes, "--json", w.base, "--force"),
                                                [str(w.base), "also an input"]),
    "1-eval-json-is-the-templates": lambda w: (w.eval("-d", w.shapes, "--templates", w.templates, "--json",
                                                      w.templates, "--force"), [str(w.templates), "also an input"]),
    "1-search-json-is-the-vector": lambda w: (w.search("--json", w.tau, "--force"), [str(w.tau), "also an input"]),
    "1-search-plot-is-a-dataset-image": lambda w: (w.search("--plot", w.image, "--force"),
                                                   [str(w.image), "also an input"]),
    "1-finetune-output-is-a-file": lambda w: (w.finetune(output=w.earlier), [str(w.earlier), "--output"]),
    "1-convert-output-is-the-source": lambda w: (["convert", w.base, "-o", w.base, "-m", TINY, "--force"],
                                                 [str(w.base), "also an input"]),
    "1-convert-output-hardlink-to-source": lambda w: (
        ["convert", w.base, "-o", hard_link(w, w.base), "-m", TINY, "--force"], ["hardlink", "also an input"]),
    # 2. no partial output: a failure on the third input leaves none of the first two vectors
    "2-vector-out-dir-third-input-fails": lambda w: (
        ["vector", "-q", "-b", w.a, "--out-dir", w.out / "taus", w.b, w.c,
         w.edited("third.safetensors", w.c, nan_in("w"))],
        [str(w.root / "third.safetensors"), "'w'", "NaN"]),
    # 3. special files: only regular files are opened (a FIFO would block forever)
    "3-fifo-templates": lambda w: (w.eval("-d", w.shapes, "--templates", w.fifo(w.templates)),
                                   [str(w.templates), "not a regular file (FIFO)"]),
    "3-fifo-classnames": lambda w: (w.eval("-d", w.shapes, "--classnames", w.fifo(w.classnames)),
                                    [str(w.classnames), "not a regular file (FIFO)"]),
    "3-fifo-dataset-image-eval": lambda w: (w.eval("-d", w.shapes, "--json", w.out / "r.json"),
                                            [str(w.fifo(w.image)), "not a regular file (FIFO)"]),
    "3-fifo-dataset-image-finetune": lambda w: (w.finetune(), [str(w.fifo(w.image)), "not a regular file (FIFO)"]),
    "3-fifo-finetune-templates": lambda w: (w.finetune("--templates", w.fifo(w.templates)),
                                            [str(w.templates), "not a regular file (FIFO)"]),
    "3-fifo-sweep-json": lambda w: (w.finetune(), [str(planted_sweep(w, "sweep.json")), "not a regular file (FIFO)"]),
    "3-fifo-sweep-record": lambda w: (
        w.finetune(), [str(planted_sweep(w, f".records/{POINT}.json")), "not a regular file (FIFO)"]),
    "3-fifo-sweep-lock": lambda w: (w.finetune(), [str(planted_sweep(w, ".lock")), "not a regular file (FIFO)"]),
    "3-fifo-convert-source": lambda w: (["convert", w.fifo(w.root / "research.pt"), "-o", w.out / "c.safetensors",
                                         "-m", TINY], [str(w.root / "research.pt"), "not a regular file (FIFO)"]),
    "3-fifo-eval-checkpoint": lambda w: (["eval", "-m", TINY, "-c", w.fifo(w.base), "-d", w.shapes],
                                         [str(w.base), "not a regular file (FIFO)"]),
    # 4. malformed JSON of the tool's own files is one line, never a traceback
    "4-sweep-json-nested-deep": lambda w: (w.finetune(), [str(_sweep_json(w, "[" * 100_000 + "]" * 100_000)),
                                                          "nested too deeply"]),
    "4-sweep-json-duplicate-key": lambda w: (w.finetune(), [str(_sweep_json(w, '{"identity": {}, "identity": {}}')),
                                                            "duplicate key 'identity'"]),
    "4-sweep-json-not-an-object": lambda w: (w.finetune(), [str(_sweep_json(w, "[1, 2]")), "not a JSON object"]),
    "4-sweep-record-not-an-object": lambda w: (w.finetune(), [str(_sweep_json(w, None, record="[1]")),
                                                              "not a JSON object"]),
    # 5. every number finite and in range; results checked before the rename
    "5-merge-weight-nan": lambda w: (["merge", "-m", "sum", "-w", "nan", "-w", "1", "-o", w.out / "m.safetensors",
                                      w.a, w.b], ["--weight"]),
    "5-merge-weight-inf": lambda w: (["merge", "-m", "sum", "-w", "1", "-w", "inf", "-o", w.out / "m.safetensors",
                                      w.a, w.b], ["--weight"]),
    "5-apply-scale-overflows": lambda w: (["apply", "-b", w.a, "-v", w.b, "-s", "1e300", "-o", w.out / "t.safetensors"],
                                          [str(w.out / "t.safetensors"), "tensor '", "NaN or Inf"]),
    "5-apply-float16-overflow": lambda w: (["apply", "-b", w.edited("big.safetensors", w.a, _times(1e5)), "-v", w.b,
                                            "-s", "1", "--dtype", "fp16", "-o", w.out / "t.safetensors"],
                                           [str(w.out / "t.safetensors"), "overflow of float16"]),
    "5-finetune-wd-inf": lambda w: (w.finetune("--wd", "inf"), ["--wd inf"]),
    "5-finetune-lr-nan": lambda w: (w.finetune("--lr", "nan"), ["--lr nan"]),
    "5-finetune-lr-negative": lambda w: (w.finetune("--lr", "-1e-3"), ["--lr -0.001"]),
    "5-finetune-label-smoothing-1.5": lambda w: (w.finetune("--label-smoothing", "1.5"), ["--label-smoothing 1.5"]),
    "5-finetune-crop-scale-nan": lambda w: (w.finetune("--crop-scale", "nan"), ["--crop-scale nan"]),
    "5-finetune-hflip-inf": lambda w: (w.finetune("--hflip", "inf"), ["--hflip inf"]),
    "5-search-coefs-nan": lambda w: (w.search("--coefs", "0,nan"), ["--coefs", "finite"]),
    "5-search-coefs-infinite-range": lambda w: (w.search("--coefs", "0:inf:3"), ["--coefs", "finite"]),
    "5-search-coefs-huge-count": lambda w: (w.search("--coefs", "0:1:999999999999"), ["--coefs", "at most 10,000"]),
    "5-search-threshold-nan": lambda w: (w.search("--threshold", "nan"), ["--threshold nan"]),
    # 6. eval and finetune check what they are given: exact shapes, the file's recorded kind
    "6-eval-checkpoint-transposed": lambda w: (
        ["eval", "-m", TINY, "-c", w.edited("t.safetensors", w.base, transpose(WIDE)), "-d", w.shapes],
        [str(w.root / "t.safetensors"), f"'{WIDE}'", "(64, 256)", "(256, 64)"]),
    "6-finetune-pretrained-transposed": lambda w: (
        w.finetune("-p", w.edited("t.safetensors", w.base, transpose(WIDE))),
        [str(w.root / "t.safetensors"), f"'{WIDE}'", "(64, 256)"]),
    "6-search-vector-transposed": lambda w: (w.search(vector=w.edited("t.safetensors", w.tau, transpose(WIDE))),
                                             [str(w.root / "t.safetensors"), f"'{WIDE}'", "(64, 256)"]),
    "6-eval-task-vector-as-checkpoint": lambda w: (["eval", "-m", TINY, "-c", w.tau, "-d", w.shapes],
                                                   [str(w.tau), "is a task vector, not a model checkpoint"]),
    "6-finetune-task-vector-as-pretrained": lambda w: (w.finetune("-p", w.tau),
                                                       [str(w.tau), "is a task vector, not a model checkpoint"]),
    "6-search-checkpoint-as-vector": lambda w: (w.search(vector=w.base), [str(w.base), "not a task vector"]),
    "6-search-nan-in-vector": lambda w: (w.search(vector=w.edited("n.safetensors", w.tau, nan_in(WIDE))),
                                         [str(w.root / "n.safetensors"), f"'{WIDE}'", "NaN"]),
    # 7. no traceback: bad data is found before the sweep folder exists; over-long numbers
    "7-finetune-corrupt-image": lambda w: (w.finetune(), [str(corrupt_image(w)), "cannot read image (not an image"]),
    "7-eval-cache-memory-400-digits": lambda w: (w.eval("-d", w.shapes, "--cache-memory", "9" * 400),
                                                 ["--cache-memory", "between 1 byte and 1 EiB"]),
    "7-finetune-cache-memory-400-digits": lambda w: (w.finetune("--cache-memory", "9" * 400),
                                                     ["--cache-memory", "between 1 byte and 1 EiB"]),
    # 8. names with control characters are escaped in error lines
    "8-control-characters-in-file-name-inspect": lambda w: (["inspect", escaped_name(w)], [CONTROL_NAME]),
    "8-control-characters-in-file-name-merge": lambda w: (["merge", "-o", w.out / "m.safetensors", w.a,
                                                           escaped_name(w)], [CONTROL_NAME]),
    "8-control-characters-in-tensor-name": lambda w: (
        ["merge", "-o", w.out / "m.safetensors", _tensor_named(w, "w\x1b]0;owned\x07"), w.a],
        ["'w\\x1b]0;owned\\x07'"]),
}


def _sweep_json(w: Workspace, text: str | None, record: str | None = None) -> Path:
    """A sweep folder whose sweep.json holds ``text`` (or a valid identity), and optionally a record."""
    fifo = planted_sweep(w, "placeholder")
    fifo.unlink()
    sweep = fifo.parent
    if text is not None:
        (sweep / "sweep.json").write_text(text)
        return sweep / "sweep.json"
    (sweep / ".records").mkdir()
    path = sweep / ".records" / f"{POINT}.json"
    path.write_text(record)
    return path


def _times(factor: float) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        for name in tensors:
            tensors[name] = tensors[name] * factor
    return change


def _tensor_named(w: Workspace, name: str) -> Path:
    path = w.root / "named.safetensors"
    tensors = load_file(str(w.a))
    tensors[name] = tensors.pop("w")
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("case", ROWS)
def test_hostile_command_is_refused_cleanly(case, ws, cli):
    assert_refused(ws, cli, ROWS[case])


# -- real processes: hangs, rlimits, signals ------------------------------------------------------


def test_fifo_source_does_not_block_a_real_process(ws):
    source = ws.fifo(ws.root / "research.pt")
    before = snapshot(ws.root)
    result = run_cli("convert", source, "-o", ws.out / "c.safetensors", "-m", TINY, timeout=60)
    assert_clean_failure(result, str(source), "not a regular file (FIFO)")
    assert snapshot(ws.root) == before


def test_file_size_limit_leaves_no_temp_file_and_no_created_folder(ws):
    target = ws.out / "new" / "sub" / "dir" / "merged.safetensors"
    before = snapshot(ws.root)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    result = run_cli("merge", "-o", target, ws.a, ws.b, "-q", preexec_fn=limit, timeout=120)
    assert_clean_failure(result, str(target), "file too large")
    assert snapshot(ws.root) == before  # new/sub/dir removed again


def test_planted_symlink_at_the_old_temp_name_redirects_nothing(ws, cli):
    """Temporary names are random and opened with O_EXCL: a link planted at the name an older
    version used (``.NAME.tmp``) is neither followed nor removed."""
    victim = ws.root / "victim.txt"
    victim.write_text("precious")
    output = ws.out / "out.safetensors"
    planted = ws.out / ".out.safetensors.tmp"
    planted.symlink_to(victim)
    assert cli("merge", "-o", output, ws.a, ws.b, "-q").returncode == 0
    assert victim.read_text() == "precious" and os.readlink(planted) == str(victim)
    assert set(load_file(str(output))) == {"w", "b"}
    assert not [p for p in ws.out.iterdir() if p.name.endswith(".tmp") and p != planted]


def test_ctrl_c_while_torch_imports_is_one_line(ws):
    """SIGINT once torch's library is mapped into the process, i.e. while ``import torch`` runs
    (Python and Typer are loaded by then; the command has not started)."""
    process = subprocess.Popen([sys.executable, "-m", "negmerge_cli", *map(str, ws.eval("-d", "digits"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.time() + 60
    while "libtorch" not in maps.read_text() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "interrupted" in lines[0], stderr


# -- 8. terminal safety of successful output ------------------------------------------------------


def test_control_characters_in_names_are_escaped_in_tables_and_json(ws, cli):
    hostile = {"w\x1b[2J\x1b[31m": torch.ones(2), "back\rspace\x07": torch.zeros(3), "b": torch.ones(1)}
    path = ws.root / "names\x1b[1m.safetensors"
    save_file(hostile, str(path), {"note\x1b[5m": "value\r\x07"})
    table = cli("inspect", path)
    assert table.returncode == 0, table.stderr
    assert not RAW_CONTROL.search(table.stdout + table.stderr), repr(table.stdout)
    for shown in (r"w\x1b[2J\x1b[31m", r"back\x0dspace\x07", r"names\x1b[1m", r"note\x1b[5m", r"value\x0d\x07"):
        assert shown in table.stdout.replace("\n", ""), shown
    as_json = cli("inspect", "--json", path)
    assert as_json.returncode == 0 and not RAW_CONTROL.search(as_json.stdout), repr(as_json.stdout)
    assert {t["name"] for t in json.loads(as_json.stdout)["tensors"]} == set(hostile)  # JSON escapes, exact names


def test_results_may_go_into_a_dataset_folder_but_never_over_its_images(ws, cli):
    """The dataset folder is an input for its images and lists only: a results file beside them
    is fine (and may be replaced with --force), an image never is."""
    results = ws.shapes / "results.json"
    results.write_text("old")
    assert cli(*ws.eval("-d", ws.shapes, "--json", results, "--force", "-q")).returncode == 0
    assert json.loads(results.read_text())[0]["n_images"] == 12
    image = ws.shapes / "red_square" / "000.png"
    assert_clean_failure(cli(*ws.eval("-d", ws.shapes, "--json", image, "--force")), str(image), "also an input")
