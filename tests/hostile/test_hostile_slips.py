"""The common slips of a new user (issue 25, item 7), one table row each, through the real CLI:
each refused slip is one ``error:`` line that says what is wrong and what to do, with the workspace
left byte-identical (:func:`hostile.assert_refused`); each accepted one does what was meant, and
says so where it is rarely what was meant.

A JSON file given as a checkpoint, weights saved as pickles (a file, or a folder holding only
pickles), an unknown dataset kind (``-d car:/tmp``), ``split`` with both forget-set selectors or
none, a merge method in capitals (accepted, any case), a merge of a single input (warned), and
``apply -o DIR/`` with a lone-file base (named ``model.safetensors``, not after the base)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from clip_helpers import TINY
from hostile import Workspace, assert_refused
from safetensors import safe_open
from safetensors.torch import load_file


def _json_as_checkpoint(w: Workspace):
    config = w.root / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    return ["apply", "-b", config, "-v", w.tau, "-s", "-1", "-o", w.out / "x.safetensors"], [
        str(config), "not a safetensors file", "JSON", "pass a .safetensors file"]


def _pickle_file(w: Workspace):
    pickle = w.root / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    return ["merge", "-o", w.out / "x.safetensors", pickle, w.a], [str(pickle), "not a safetensors file",
                                                                   "torch.save", "negmerge convert"]


def _transformers_pickle_folder(w: Workspace):
    folder = w.root / "hf-bin"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    return ["vector", "-b", folder, "-o", w.out / "x.safetensors", w.base], [
        str(folder), "pytorch_model.bin", "a pickle", "safe_serialization=True", "negmerge convert"]


def _only_pickles_folder(w: Workspace):
    folder = w.root / "bins"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / "model.bin")
    return ["inspect", folder], [str(folder), "holds no safetensors weights, only model.bin", "negmerge convert"]


def _empty_folder(w: Workspace):
    folder = w.root / "empty"
    folder.mkdir()
    return ["inspect", folder], [str(folder), "holds no weights", "pass a model folder"]


def _unknown_dataset_kind(w: Workspace):
    return ["finetune", "-m", TINY, "-d", "car:/tmp", "-o", w.out / "sweep", "--steps", "1"], [
        "car:/tmp", "unknown dataset kind 'car'", "did you mean cars?", "cars:ROOT", "digits"]


def _split_with_both_selectors(w: Workspace):
    return ["split", "-d", "digits", "-o", w.out / "split.json", "--forget-fraction", "0.1",
            "--forget-classes", "3"], ["--forget-fraction", "--forget-classes", "give one of them, not both"]


def _split_with_no_selector(w: Workspace):
    return ["split", "-d", "digits", "-o", w.out / "split.json"], ["no forget set chosen", "--forget-fraction",
                                                                   "--forget-classes"]


def _unknown_method(w: Workspace):
    return ["merge", "-m", "Tie", "-o", w.out / "x.safetensors", w.a, w.b], [
        "--method Tie", "unknown method", "negmerge", "ties"]


REFUSED = {
    "json-file-as-checkpoint": _json_as_checkpoint,
    "torch-save-file": _pickle_file,
    "folder-of-pytorch_model.bin": _transformers_pickle_folder,
    "folder-of-only-pickles": _only_pickles_folder,
    "empty-folder": _empty_folder,
    "unknown-dataset-kind": _unknown_dataset_kind,
    "split-both-selectors": _split_with_both_selectors,
    "split-no-selector": _split_with_no_selector,
    "unknown-method": _unknown_method,
}


@pytest.mark.parametrize("case", REFUSED)
def test_slip_is_refused_in_one_line_saying_what_to_do(case, ws, cli):
    assert_refused(ws, cli, REFUSED[case])


# -- slips that are accepted: they do what was meant ---------------------------------------------


def _method(path: Path) -> str:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()["negmerge.method"]


def _method_in_capitals(w: Workspace, cli):
    result = cli("merge", "-m", "TIES", "-o", w.out / "x.safetensors", w.a, w.b, w.c)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and _method(w.out / "x.safetensors") == "ties"
    result = cli("merge", "-m", "NegMerge", "-o", w.out / "y.safetensors", w.a, w.b, "-q")
    assert result.returncode == 0 and _method(w.out / "y.safetensors") == "negmerge"


def _single_input_merge(w: Workspace, cli):
    result = cli("merge", "-o", w.out / "x.safetensors", w.a, "-q")
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert warning.startswith("warning:") and str(w.a) in warning and "single input" in warning
    assert "negmerge vector" in warning
    assert torch.equal(load_file(str(w.out / "x.safetensors"))["w"], load_file(str(w.a))["w"])


def _lone_file_base_into_a_folder(w: Workspace, cli):
    out = w.root / "unlearned"
    result = cli("apply", "-b", w.base, "-v", w.tau, "-s", "-1", "-o", f"{out}/", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors"]  # not base.safetensors


ACCEPTED = {
    "method-in-capitals": _method_in_capitals,
    "single-input-merge": _single_input_merge,
    "lone-file-base-into-a-folder": _lone_file_base_into_a_folder,
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_slip_is_accepted_and_does_what_was_meant(case, ws, cli):
    ACCEPTED[case](ws, cli)
