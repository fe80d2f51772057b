"""Hugging Face model folders in and out: merge --base / apply to -o DIR/ give a folder that
``AutoModelForCausalLM.from_pretrained`` loads as is, with the base's layout, its other files and a
model card; GPT-2's tied lm_head stays tied (stored once, as save_pretrained does).

Tiny random models built with transformers (a test-only dependency); the numbers are checked
against the same arithmetic done densely here on the state dicts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_clean_failure, run_cli
from safetensors import safe_open
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

SCALE = -0.9
TOKENS = torch.tensor([[1, 5, 9, 17, 33, 65, 127, 0]])


# -- tiny models on disk ------------------------------------------------------------------------


def _llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _save_family(root: Path, build, count: int, shard: str | None) -> tuple[Path, list[Path]]:
    """A base and ``count`` "fine-tunes" (the base with seeded perturbations), saved as transformers does."""
    torch.manual_seed(0)
    model = build()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(root / "base", **kwargs)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    finetuned = []
    for index in range(count):
        torch.manual_seed(100 + index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(original[name] + 0.02 * torch.randn_like(parameter))
        model.save_pretrained(root / f"ft{index}", **kwargs)
        finetuned.append(root / f"ft{index}")
    return root / "base", finetuned


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, list[Path]]:
    base, finetuned = _save_family(tmp_path_factory.mktemp("llama"), _llama, 2, "20KB")
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (base / "README.md").write_text("# the base's own card\n")
    (base / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (base / "training_args.bin").write_bytes(b"not copied")
    (base / "onnx").mkdir()
    (base / "onnx" / "model.onnx").write_bytes(b"not copied")
    return base, finetuned


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[Path, list[Path]]:
    return _save_family(tmp_path_factory.mktemp("gpt2"), _gpt2, 1, None)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _negmerge(taus: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The paper's rule, densely: mean of the k values where all k signs agree strictly, else 0."""
    merged = {}
    for name in taus[0]:
        stack = torch.stack([tau[name] for tau in taus])
        agree = (stack > 0).all(0) | (stack < 0).all(0)
        merged[name] = torch.where(agree, stack.sum(0) / len(taus), torch.zeros_like(stack[0]))
    return merged


@contextmanager
def _transformers_warnings():
    """Every message transformers logs while the block runs."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _load(folder: Path):
    with _transformers_warnings() as warnings:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not [w for w in warnings if "missing" in w.lower() or "newly initialized" in w.lower()], warnings
    return model.eval()


def _logits_with(base: Path, state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    model.load_state_dict(state, strict=False)  # GPT-2: lm_head follows wte (tied)
    with torch.no_grad():
        return model.eval()(TOKENS).logits


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a sharded Llama: merge --base, apply, from_pretrained ------------------------------------


def test_negmerge_and_negation_of_a_sharded_llama_load_with_transformers(llama, tmp_path):
    base, finetuned = llama
    tau, out = tmp_path / "tau", tmp_path / "out"
    merged = run_cli("merge", "--base", base, "-o", f"{tau}/", *finetuned, "--quiet")
    assert merged.returncode == 0, merged.stderr
    applied = run_cli("apply", "--base", base, "--vector", tau, "--scale", SCALE, "-o", f"{out}/", "--quiet")
    assert applied.returncode == 0, applied.stderr

    # the base's layout: transformers' shard names and index; its other files; our card
    shards = sorted(p.name for p in base.glob("model-*.safetensors"))
    assert len(shards) > 1
    for folder in (tau, out):
        names = {p.name for p in folder.iterdir()}
        assert names == {*shards, "model.safetensors.index.json", "config.json", "generation_config.json",
                         "tokenizer_config.json", "README.md"}
        assert (folder / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert "the base's own card" not in (out / "README.md").read_text()

    # the same arithmetic, densely: theta = base + scale * negmerge(ft_i - base)
    base_state = _state(base)
    taus = [{n: _state(f)[n] - v for n, v in base_state.items()} for f in finetuned]
    vector = _negmerge(taus)
    torch.testing.assert_close(_state(tau), vector, rtol=1e-6, atol=1e-7)
    expected = {n: v + SCALE * vector[n] for n, v in base_state.items()}
    model = _load(out)
    torch.testing.assert_close(dict(model.state_dict()), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_logits(model), _logits_with(base, expected), rtol=1e-5, atol=1e-5)


def test_model_card_front_matter_and_inputs(llama, tmp_path, cli):
    base, finetuned = llama
    tau = tmp_path / "tau"
    result = cli("merge", "-m", "ties", "--density", "0.5", "--base", base, "-o", f"{tau}/", *finetuned, "-q")
    assert result.returncode == 0, result.stderr
    card = (tau / "README.md").read_text()
    front = _front_matter(card)
    assert front["base_model"] == "base"
    assert front["library_name"] == "transformers"
    assert {"merge", "ties"} <= set(front["tags"])
    # every input file with its SHA-256, as the weights' provenance records them
    rows = {tuple(cell.strip(" `") for cell in line.strip("|").split("|")) for line in card.splitlines()
            if line.startswith("| `input` |") or line.startswith("| `base` |")}
    expected = {(role, str(folder), p.name, _sha256(p))
                for role, folder in [("base", base), *[("input", f) for f in finetuned]]
                for p in folder.glob("*.safetensors")}
    assert rows == expected
    recorded = json.loads(safe_open(next(tau.glob("model-*.safetensors")), "pt").metadata()["negmerge.inputs"])
    assert {(r["input"], f["file"], f["sha256"]) for r in recorded for f in r["files"]} == {
        (named, f, s) for role, named, f, s in expected if role == "input"}
    assert '"density": 0.5' in card and f"negmerge merge -m ties --density 0.5 --base {base}" in card


# -- GPT-2: the tied lm_head stays stored once ----------------------------------------------------


def test_gpt2_tied_embeddings_stay_tied_and_load_without_warnings(gpt2, tmp_path, cli):
    base, (finetuned,) = gpt2
    stored = set(load_file(base / "model.safetensors"))
    assert "lm_head.weight" not in stored and "transformer.wte.weight" in stored  # save_pretrained's convention
    tau, out = tmp_path / "tau.safetensors", tmp_path / "out"
    assert cli("vector", "--base", base, "-o", tau, finetuned, "-q").returncode == 0
    applied = cli("apply", "--base", base, "--vector", tau, "--scale", SCALE, "-o", f"{out}/", "-q")
    assert applied.returncode == 0, applied.stderr

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                     "model.safetensors"]
    assert set(load_file(out / "model.safetensors")) == stored  # no lm_head.weight added
    base_state, ft_state = _state(base), _state(finetuned)
    expected = {n: v + SCALE * (ft_state[n] - v) for n, v in base_state.items()}
    model = _load(out)  # no missing-weight warnings
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight, expected["transformer.wte.weight"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_logits(model), _logits_with(base, expected), rtol=1e-5, atol=1e-5)


# -- options and refusals (in-process CLI: fast) ------------------------------------------------


def test_no_copy_files_and_no_model_card(llama, tmp_path, cli):
    base, finetuned = llama
    vector = tmp_path / "tau.safetensors"
    assert cli("merge", "-m", "sum", "--base", base, "-o", vector, finetuned[0]).returncode == 0
    bare, no_card = tmp_path / "bare", tmp_path / "no-card"
    result = cli("apply", "-b", base, "-v", vector, "-s", "-1", "-o", f"{bare}/", "--no-copy-files", "--no-model-card")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in bare.iterdir()} == {p.name for p in base.glob("model*.safetensors*")}
    result = cli("apply", "-b", base, "-v", vector, "-s", "-1", "-o", f"{no_card}/", "--no-model-card", "--shard-size", "1MB")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in no_card.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                         "tokenizer_config.json"]  # --shard-size: one shard here


def test_existing_output_folder_is_refused_without_force_and_left_unchanged(llama, tmp_path, cli):
    base, finetuned = llama
    out = tmp_path / "out"
    assert cli("merge", "--base", base, "-o", f"{out}/", *finetuned).returncode == 0
    before = _listing(out)
    result = cli("merge", "-m", "mean", "--base", base, "-o", out, *finetuned)  # an existing folder, no slash needed
    assert_clean_failure(result, str(out / "config.json"), "exists", "--force")
    assert _listing(out) == before and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert cli("merge", "-m", "mean", "--base", base, "-o", out, *finetuned, "--force").returncode == 0
    assert "`mean`" in (out / "README.md").read_text()


def test_the_base_folder_itself_is_refused(llama, tmp_path, cli):
    base, finetuned = llama
    before = _listing(base)
    assert_clean_failure(cli("merge", "--base", base, "-o", base, *finetuned, "--force"), "also an input")
    assert _listing(base) == before


def test_base_folder_without_weights_is_one_line(tmp_path, cli, llama):
    base, finetuned = llama
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    result = cli("merge", "--base", empty, "-o", f"{tmp_path / 'out'}/", *finetuned)
    assert_clean_failure(result, str(empty), "holds no weights (no .safetensors file or index)")
    assert not (tmp_path / "out").exists()


def test_links_out_of_the_base_folder_and_fifos_are_refused(llama, tmp_path, cli):
    base, finetuned = llama
    vector = tmp_path / "tau.safetensors"
    assert cli("vector", "--base", base, "-o", vector, finetuned[0]).returncode == 0
    copy = tmp_path / "base-copy"
    copy.mkdir()
    for path in base.iterdir():
        if path.is_file():
            os.link(path, copy / path.name)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (copy / "notes.txt").symlink_to(secret)
    result = cli("apply", "-b", copy, "-v", vector, "-s", "-1", "-o", f"{tmp_path / 'out'}/")
    assert_clean_failure(result, str(copy / "notes.txt"), "symlink out of the base folder", "--no-copy-files")
    (copy / "notes.txt").unlink()
    os.mkfifo(copy / "special_tokens_map.json")
    result = cli("apply", "-b", copy, "-v", vector, "-s", "-1", "-o", f"{tmp_path / 'out'}/")
    assert_clean_failure(result, "special_tokens_map.json", "not a regular file (FIFO)")
    assert not (tmp_path / "out").exists()


def test_merge_of_vectors_into_a_folder_has_a_default_name(tmp_path, cli, vectors):
    assert cli("merge", "-o", tmp_path, *vectors, "-q").returncode == 0  # an existing folder: no slash needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "model.safetensors", "vectors"]
    front = _front_matter((tmp_path / "README.md").read_text())
    assert "base_model" not in front and "library_name" not in front and "negmerge" in front["tags"]


def test_a_hugging_face_cache_snapshot_is_a_base_folder(gpt2, tmp_path, cli):
    """The hub cache's layout: snapshots/REV/NAME are symlinks into the repository's blobs/."""
    base, (finetuned,) = gpt2
    repository = tmp_path / "hub" / "models--some-org--tiny-gpt2"
    snapshot = repository / "snapshots" / "0123abc"
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in base.iterdir():
        blob = repository / "blobs" / _sha256(path)
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    vector = tmp_path / "tau.safetensors"
    assert cli("vector", "--base", snapshot, "-o", vector, finetuned, "-q").returncode == 0
    out = tmp_path / "out"
    result = cli("apply", "-b", snapshot, "-v", vector, "-s", "-1", "-o", f"{out}/", "-q")
    assert result.returncode == 0, result.stderr
    assert not any(p.is_symlink() for p in out.iterdir())
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert _front_matter((out / "README.md").read_text())["base_model"] == "some-org/tiny-gpt2"


# -- the card's YAML ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['a "quoted" \\ name', "line\nbreak: # not a comment", "tab\t\x1b[31m",
                                  "emoji \U0001F600 and \u2028", "- [not, a, list]", "", "yes", "0.5"])
def test_yaml_strings_read_back_exactly(text):
    from negmerge_cli.checkpoint.card import front_matter

    assert yaml.safe_load(front_matter({"base_model": text, "tags": [text]}).split("---\n")[1]) == {
        "base_model": text, "tags": [text]}
