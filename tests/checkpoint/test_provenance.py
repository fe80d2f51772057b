"""Provenance of inputs that are folders of shards: each input recorded as the user named it (plus
its resolved path) with every shard's SHA-256, in the weights' metadata and in the model card; and
``apply``'s card carrying its vector's own provenance, so the chain from the fine-tunes to the
unlearned model reads from the output. Older metadata (a flat list of files) still reads.

Real sharded Hugging Face folders (three shards each, built by transformers), the real CLI in a
subprocess, and transformers loading the outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_hf_folders import (  # skips without transformers
    _front_matter,
    _llama,
    _load,
    _save_family,
    _sha256,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A base and three fine-tunes, each a folder of three shards (transformers' names: the same
    ``model-0000N-of-00003.safetensors`` in every folder)."""
    base, finetuned = _save_family(tmp_path_factory.mktemp("family"), _llama, 3, "40KB")
    for folder in (base, *finetuned):
        assert len(list(folder.glob("model-0000?-of-00003.safetensors"))) == 3
    return base, finetuned


def _metadata(folder: Path) -> dict[str, str]:
    with safe_open(str(next(folder.glob("model-*.safetensors"))), "pt") as handle:
        return handle.metadata()


def _card_rows(card: str, section: str) -> set[tuple[str, ...]]:
    """The (role, input, file, SHA-256) rows of the card's table under ``## section``."""
    text = card.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {tuple(cell.strip(" `") for cell in line.strip("|").split("|")) for line in text.splitlines()
            if line.startswith(("| `input` |", "| `base` |", "| `vector` |"))}


def _expected(role: str, named: str, folder: Path) -> set[tuple[str, ...]]:
    return {(role, named, p.name, _sha256(p)) for p in folder.glob("*.safetensors")}


def test_sharded_inputs_are_recorded_as_named_and_apply_carries_the_chain(family, tmp_path, cli):
    base, finetuned = family
    # the inputs as a user names them: a folder, a folder with a slash, an index
    named = [str(finetuned[0]), f"{finetuned[1]}/", str(finetuned[2] / "model.safetensors.index.json")]
    tau, out = tmp_path / "tau", tmp_path / "unlearned"
    merged = cli("merge", "--base", base, "-o", f"{tau}/", *named, "-q")
    assert merged.returncode == 0, merged.stderr
    applied = cli("apply", "--base", base, "--vector", tau, "-s", "-1", "-o", f"{out}/", "-q")
    assert applied.returncode == 0, applied.stderr

    # the metadata: one entry per input, as named and resolved, with its three shards' digests
    as_named = [str(finetuned[0]), str(finetuned[1]), named[2]]  # the shell gives "ft1/", the CLI a path: "ft1"
    recorded = json.loads(_metadata(tau)["negmerge.inputs"])
    assert [r["input"] for r in recorded] == as_named
    assert [r["path"] for r in recorded] == [str(Path(n).resolve()) for n in as_named]
    for entry, folder in zip(recorded, finetuned):
        assert [(f["file"], f["sha256"]) for f in entry["files"]] == [
            (p.name, _sha256(p)) for p in sorted(folder.glob("model-*.safetensors"))]
    (base_entry,) = json.loads(_metadata(tau)["negmerge.base"])
    assert base_entry["input"] == str(base) and len(base_entry["files"]) == 3

    # the merge's card: three task vectors (not nine), every shard under the input it belongs to
    card = (tau / "README.md").read_text()
    assert "the merge of 3 task vectors" in card
    expected = _expected("base", str(base), base).union(
        *(_expected("input", n, f) for n, f in zip(as_named, finetuned)))
    assert _card_rows(card, "Inputs") == expected

    # apply's card: its own inputs, then how the vector was made (method, the three fine-tunes)
    card = (out / "README.md").read_text()
    assert _card_rows(card, "Inputs") == _expected("base", str(base), base) | _expected("vector", str(tau), tau)
    assert "made by `merge` with the method `negmerge` from 3 inputs" in card
    assert _card_rows(card, "The vector") == expected
    assert {"unlearning", "task-arithmetic"} <= set(_front_matter(card)["tags"])
    carried = json.loads(_metadata(out)["negmerge.vector_provenance"])
    assert carried["negmerge.command"] == "merge" and carried["negmerge.method"] == "negmerge"
    assert json.loads(carried["negmerge.inputs"]) == recorded

    # both outputs are still models transformers loads as they are
    _load(out)
    _load(tau)


def test_old_flat_metadata_still_reads(family, tmp_path, cli):
    """A vector written before inputs were grouped: a flat list of ``{"file", "sha256"}``."""
    base, finetuned = family
    vector = tmp_path / "old.safetensors"
    assert cli("vector", "--base", base, "-o", vector, finetuned[0], "-q").returncode == 0
    flat = [{"file": "model-00001-of-00003.safetensors", "sha256": "a" * 64},
            {"file": "model-00002-of-00003.safetensors", "sha256": "b" * 64}]
    with safe_open(str(vector), "pt") as handle:
        metadata = handle.metadata()
    metadata.update({"negmerge.inputs": json.dumps(flat), "negmerge.base": json.dumps([{"file": "base.st",
                                                                                         "sha256": "c" * 64}])})
    save_file(load_file(str(vector)), str(vector), metadata)
    out = tmp_path / "out"
    applied = cli("apply", "--base", base, "--vector", vector, "-s", "-1", "-o", f"{out}/", "-q")
    assert applied.returncode == 0, applied.stderr
    card = (out / "README.md").read_text()
    assert "made by `vector` from 2 inputs" in card  # an old list cannot say which files belong together
    assert _card_rows(card, "The vector") == {
        ("input", f["file"], f["file"], f["sha256"]) for f in flat} | {("base", "base.st", "base.st", "c" * 64)}


@pytest.mark.parametrize("value", ["not json", "{\"a\": 1}", "[1, [2]]", "[{\"files\": 3}]", "[" * 5000])
def test_damaged_input_lists_are_skipped_by_the_card(value):
    from negmerge_cli.checkpoint.card import render

    card = render({"negmerge.command": "merge", "negmerge.inputs": value}, title="t", base_model=None,
                  library_name=None, command_line=None)
    assert "the merge of" in card


def test_a_lone_file_base_names_the_folder_output_model_safetensors(tmp_path, cli):
    """``apply -o DIR/`` with an OpenCLIP-style lone file ``base.safetensors``: the result is not the base."""
    generator = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 3, generator=generator)}
    save_file(base, str(tmp_path / "base.safetensors"), {"format": "pt", "negmerge.kind": "checkpoint"})
    save_file({"w": torch.ones(4, 3)}, str(tmp_path / "tau.safetensors"), {"format": "pt", "negmerge.kind": "task_vector"})
    out = tmp_path / "unlearned"
    applied = cli("apply", "-b", tmp_path / "base.safetensors", "-v", tmp_path / "tau.safetensors", "-s", "-1",
                  "-o", f"{out}/", "-q")
    assert applied.returncode == 0, applied.stderr
    assert sorted(os.listdir(out)) == ["README.md", "model.safetensors"]
    torch.testing.assert_close(load_file(str(out / "model.safetensors"))["w"], base["w"] - 1)
