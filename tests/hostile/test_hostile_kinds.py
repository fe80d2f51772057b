"""The wrong kind of input (a checkpoint where a task vector belongs, or the reverse) and an
input that is another one again, through the real CLI in every command.

Each input's kind is what its ``negmerge.kind`` metadata records, else what its folder says for sure
(a Hugging Face model folder is a checkpoint, a PEFT LoRA adapter folder a task vector); a file of
unknown kind is accepted in every role (:mod:`negmerge_cli.checkpoint.kinds`). A vector, fine-tune
or evaluated vector that is its base or checkpoint again (the same file, or the same tensors) is
refused; the same vector twice in ``merge`` is a legitimate weighting and keeps working.

Every refused row makes the checks of tests/hostile.py: a non-zero exit, one ``error:`` line naming
the file and the hint, no traceback, and a workspace byte-identical afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from clip_helpers import TINY
from hostile import Workspace, assert_refused
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_hf_folders import _llama, _save_family  # noqa: E402  (after the importorskip)
from test_lora import MODELS, _make_adapter  # noqa: E402

CLASSIFIER = "resnet8-cifar"
Row = Callable[[Workspace], tuple[list, list[str]]]  # -> (CLI arguments, fragments of the error line)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Real Hugging Face model folders (a base, two fine-tunes) and a PEFT LoRA adapter of it."""
    root = tmp_path_factory.mktemp("kinds")
    _save_family(root, _llama, 2, None)
    build, lora, _ = MODELS["llama"]
    _make_adapter(build, root / "adapter", seed=0, **lora)
    return root


def fine_tune(w: Workspace) -> Path:
    """ws.base moved a little: a checkpoint by its metadata (kept from the base)."""
    return w.edited("ft.safetensors", w.base, lambda t: t.__setitem__("logit_scale", t["logit_scale"] + 1))


def plain(w: Workspace, name: str = "plain.safetensors") -> Path:
    """ws.base's tensors with no metadata at all: a state dict from elsewhere, of unknown kind."""
    save_file(load_file(str(w.base)), str(w.root / name))
    return w.root / name


def with_kind(w: Workspace, kind: str) -> Path:
    """ws.tau with a kind the tool does not know."""
    save_file(load_file(str(w.tau)), str(w.root / "odd.safetensors"), {"format": "pt", "negmerge.kind": kind})
    return w.root / "odd.safetensors"


def copied(w: Workspace, name: str) -> Path:
    """A copy of one of the module's model folders inside the workspace (checked for changes)."""
    shutil.copytree(w.models / name, w.root / name)
    return w.root / name


def merge(w: Workspace, *args) -> list:
    return ["merge", "-o", w.out / "m.safetensors", *args]


def apply(w: Workspace, base: Path, vector: Path) -> list:
    return ["apply", "-b", base, "-v", vector, "-s", "-1", "-o", w.out / "t.safetensors"]


def vector(w: Workspace, base: Path, *finetuned: Path) -> list:
    return ["vector", "-b", base, "-o", w.out / "v.safetensors", *finetuned]


def search(w: Workspace, checkpoint: Path, tau: Path) -> list:
    return ["eval", "-m", TINY, "-c", checkpoint, "--vector", tau, "--forget", w.shapes, "--retain", w.shapes,
            "--coefs", "0,1", "-j", "0", "-b", "8"]


def classifier_search(w: Workspace, checkpoint: Path, tau: Path) -> list:
    # both checks come before the data is read: any existing file does as the forget split
    return ["eval", "-m", CLASSIFIER, "-c", checkpoint, "--vector", tau, "-d", "cifar10:" + str(w.shapes),
            "--forget-split", w.templates]


CHECKPOINT_AS_VECTOR = "is a model checkpoint, not a task vector (its metadata says so)"
VECTOR_AS_CHECKPOINT = "is a task vector, not a model checkpoint (its metadata says so)"

ROWS: dict[str, Row] = {
    # -- the wrong kind in every role -----------------------------------------------------------------------
    "merge-checkpoints-without-base": lambda w: (
        merge(w, w.base, fine_tune(w)), [str(w.base), CHECKPOINT_AS_VECTOR, "pass --base BASE", "negmerge vector"]),
    "merge-with-base-over-task-vectors": lambda w: (merge(w, "--base", w.base, w.tau, w.tau),
                                                    [str(w.tau), VECTOR_AS_CHECKPOINT, "leave out --base"]),
    "merge-base-is-a-task-vector": lambda w: (merge(w, "--base", w.tau, w.base, fine_tune(w)),
                                              [str(w.tau), VECTOR_AS_CHECKPOINT, "--base is the checkpoint"]),
    "merge-hf-model-folder-without-base": lambda w: (
        merge(w, copied(w, "ft0"), copied(w, "ft1")),
        [str(w.root / "ft0"), "is a model checkpoint, not a task vector (a Hugging Face model folder", "--base"]),
    "merge-unknown-kind-value": lambda w: (merge(w, with_kind(w, "weights"), w.a),
                                           [str(w.root / "odd.safetensors"), "negmerge.kind is 'weights'"]),
    "apply-vector-is-a-checkpoint": lambda w: (
        apply(w, w.base, fine_tune(w)), [str(w.root / "ft.safetensors"), CHECKPOINT_AS_VECTOR, "negmerge vector"]),
    "apply-base-and-vector-swapped": lambda w: (apply(w, w.tau, w.base),
                                                [str(w.tau), VECTOR_AS_CHECKPOINT, "--base", "--vector", "swapped"]),
    "apply-base-is-a-lora-adapter": lambda w: (
        apply(w, copied(w, "adapter"), w.a),
        [str(w.root / "adapter"), "is a task vector, not a model checkpoint (a LoRA adapter folder)"]),
    "apply-vector-is-a-hf-model-folder": lambda w: (
        apply(w, copied(w, "base"), copied(w, "ft0")),
        [str(w.root / "ft0"), "is a model checkpoint, not a task vector (a Hugging Face model folder"]),
    "vector-base-is-a-task-vector": lambda w: (vector(w, w.tau, w.base), [str(w.tau), VECTOR_AS_CHECKPOINT, "--base"]),
    "vector-finetuned-is-a-task-vector": lambda w: (vector(w, w.base, w.tau),
                                                    [str(w.tau), VECTOR_AS_CHECKPOINT, "merged or applied as it is"]),
    "eval-checkpoint-is-a-task-vector": lambda w: (["eval", "-m", TINY, "-c", w.tau, "-d", w.shapes],
                                                   [str(w.tau), VECTOR_AS_CHECKPOINT, "negmerge apply"]),
    "eval-vector-is-a-checkpoint": lambda w: (search(w, w.base, fine_tune(w)),
                                              [str(w.root / "ft.safetensors"), CHECKPOINT_AS_VECTOR]),
    "eval-classifier-checkpoint-is-a-task-vector": lambda w: (classifier_search(w, w.tau, w.a),
                                                              [str(w.tau), VECTOR_AS_CHECKPOINT]),
    "eval-classifier-vector-is-a-checkpoint": lambda w: (classifier_search(w, w.a, w.base),
                                                         [str(w.base), CHECKPOINT_AS_VECTOR]),
    "finetune-pretrained-is-a-task-vector": lambda w: (w.finetune("-p", w.tau), [str(w.tau), VECTOR_AS_CHECKPOINT]),
    "convert-source-is-a-task-vector": lambda w: (["convert", w.tau, "-o", w.out / "c.safetensors", "-m", TINY],
                                                  [str(w.tau), VECTOR_AS_CHECKPOINT, "negmerge apply"]),
    # -- an input that is another one again ----------------------------------------------------------------
    "eval-vector-is-the-checkpoint": lambda w: (
        search(w, plain(w), plain(w)), [str(w.root / "plain.safetensors"), "is the same file as --checkpoint"]),
    "eval-vector-is-a-copy-of-the-checkpoint": lambda w: (
        search(w, w.base, plain(w)), [str(w.root / "plain.safetensors"), "holds the same tensors as --checkpoint",
                                      str(w.base), "negmerge vector"]),
    "eval-classifier-vector-is-the-checkpoint": lambda w: (classifier_search(w, w.a, w.a),
                                                           [str(w.a), "is the same file as --checkpoint"]),
    "apply-vector-is-the-base": lambda w: (apply(w, w.a, w.a), [str(w.a), "is the same file as --base"]),
    "apply-vector-is-a-hard-link-to-the-base": lambda w: (apply(w, w.a, _hard_link(w, w.a)),
                                                          [str(w.root / "link.safetensors"), "same file as --base"]),
    "vector-finetuned-is-the-base": lambda w: (vector(w, w.a, w.a),
                                               [str(w.a), "is the same file as --base", "zero everywhere"]),
    "vector-finetuned-is-a-copy-of-the-base": lambda w: (
        vector(w, w.base, plain(w)), [str(w.root / "plain.safetensors"), "holds the same tensors as --base",
                                      "zero everywhere"]),
    "merge-base-among-the-inputs": lambda w: (merge(w, "--base", w.base, fine_tune(w), w.base),
                                              [str(w.base), "is the same file as --base", "zero everywhere"]),
}


def _hard_link(w: Workspace, target: Path) -> Path:
    (w.root / "link.safetensors").hardlink_to(target)
    return w.root / "link.safetensors"


@pytest.mark.parametrize("case", ROWS)
def test_wrong_kind_or_same_input_is_refused(case, ws, cli, models):
    ws.models = models
    assert_refused(ws, cli, ROWS[case])


# -- what keeps working -------------------------------------------------------------------------------------


def test_unknown_kinds_and_right_kinds_still_work(ws, cli):
    """Vectors with no metadata merge (the same one twice too: a weighting); fine-tunes merge with
    --base; a plain state dict is accepted as a base and as a vector."""
    out = ws.out
    assert cli("merge", "-o", out / "abc.safetensors", ws.a, ws.b, ws.c, "-q").returncode == 0
    assert cli("merge", "-m", "mean", "-o", out / "aa.safetensors", ws.a, ws.a, "-q").returncode == 0
    assert torch.equal(load_file(str(out / "aa.safetensors"))["w"], load_file(str(ws.a))["w"])
    finetuned = fine_tune(ws)
    result = cli("merge", "--base", ws.base, "-o", out / "fly.safetensors", finetuned, finetuned, "-q")
    assert result.returncode == 0, result.stderr
    assert torch.equal(load_file(str(out / "fly.safetensors"))["logit_scale"], torch.ones(()))
    assert cli("apply", "-b", plain(ws), "-v", ws.tau, "-s", "-1", "-o", out / "t.safetensors", "-q").returncode == 0
    assert cli("vector", "-b", ws.a, "-o", out / "ab.safetensors", ws.b, "-q").returncode == 0


def test_metadata_outranks_the_folder(models, tmp_path, cli):
    """A merge written into a folder gets the base's config.json beside it, but its metadata says it
    is a task vector: apply takes it as --vector, and merge without --base as an input."""
    merged = tmp_path / "merged"
    result = cli("merge", "--base", models / "base", models / "ft0", models / "ft1", "-o", f"{merged}/", "-q")
    assert result.returncode == 0, result.stderr
    assert (merged / "config.json").is_file()
    result = cli("apply", "-b", models / "base", "-v", merged, "-s", "-1", "-o", tmp_path / "unlearned/", "-q")
    assert result.returncode == 0, result.stderr
    assert cli("merge", "-o", tmp_path / "again.safetensors", merged, merged, "-q").returncode == 0
