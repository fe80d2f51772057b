"""Hugging Face repo ids (``ORG/NAME``, ``ORG/NAME@REVISION``) wherever a checkpoint, vector or model
folder is taken, resolved from an offline hub cache in the cache's own layout (tests/hub_cache_builder.py)
with HF_HUB_OFFLINE=1 and every socket connection refused: vector, merge (inputs and --base), apply,
inspect, convert, eval and finetune, through the real CLI; transformers and open_clip load the outputs,
and the numbers are checked against the same arithmetic done densely on the state dicts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_failure, run_cli
from hub_cache_builder import add_snapshot, commit_of, offline_hub
from safetensors import safe_open
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
from test_hf_folders import _front_matter, _llama, _load, _logits, _logits_with, _negmerge, _save_family, _state  # noqa: E402

BASE, FT, TAU, LYING = "tiny-org/llama", "tiny-org/llama-ft", "tiny-org/llama-tau", "tiny-org/lying"
HF_CLIP, OPEN_CLIP = "tiny-org/hf-clip", "tiny-org/open-clip"
TINY = "negmerge-tiny"
V1 = commit_of("ft v1")  # tag v1 of FT holds the second fine-tune
LIE = "ab" * 32  # a blob name that is not the file's SHA-256: shows where the digest came from


def _hf_clip_config():
    # the HF CLIP that negmerge-tiny is (as tests/convert/test_convert.py builds it)
    return transformers.CLIPConfig(
        vision_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-5),
        text_config=dict(hidden_size=32, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                         max_position_embeddings=24, vocab_size=49408, hidden_act="gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407),
        projection_dim=64)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache (a sharded Llama base, a fine-tune repo whose tag v1 is a second fine-tune, a task
    vector, an HF CLIP, a repo with a lying blob name) and the local folders it was made from."""
    root = tmp_path_factory.mktemp("hub")
    base, (ft0, ft1) = _save_family(root / "models", _llama, 2, "20KB")
    (base / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    cache = root / "cache"
    add_snapshot(cache, BASE, base, commit_of("base"))
    add_snapshot(cache, FT, ft0, commit_of("ft main"))
    add_snapshot(cache, FT, ft1, V1, refs=("v1",))
    torch.manual_seed(0)
    transformers.CLIPModel(_hf_clip_config()).save_pretrained(root / "hf-clip")
    add_snapshot(cache, HF_CLIP, root / "hf-clip", commit_of("clip"))
    (root / "config-only").mkdir()
    shutil.copy(base / "config.json", root / "config-only")
    add_snapshot(cache, "tiny-org/config-only", root / "config-only", commit_of("config"))  # weights never fetched
    with offline_hub(cache) as env:
        from negmerge_cli.cli.app import main

        (root / "tau").mkdir()
        try:
            main(["vector", "--base", str(base), "-o", str(root / "tau" / "tau.safetensors"), str(ft0), "-q"])
        except SystemExit as exit:
            assert not exit.code
        add_snapshot(cache, TAU, root / "tau", commit_of("tau"))
        add_snapshot(cache, LYING, root / "tau", commit_of("lying"), blob_names={"tau.safetensors": LIE})
        yield {"root": root, "cache": cache, "base": base, "ft": (ft0, ft1), "env": env}


def _inputs(path: Path, key: str) -> list[dict]:
    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()[f"negmerge.{key}"])


def test_merge_base_and_apply_by_id_load_with_transformers(hub, cli, tmp_path):
    base, (ft0, ft1) = hub["base"], hub["ft"]
    merged, out = tmp_path / "merged.safetensors", tmp_path / "out"
    result = cli("merge", "--base", BASE, FT, f"{FT}@v1", "-o", merged, "-q")
    assert result.returncode == 0, result.stderr
    result = cli("apply", "--base", BASE, "--vector", merged, "-s", "-0.9", "-o", f"{out}/", "-q")
    assert result.returncode == 0, result.stderr

    theta0 = _state(base)
    tau = _negmerge([{k: _state(ft)[k] - v for k, v in theta0.items()} for ft in (ft0, ft1)])
    expected = _logits_with(base, {k: v - 0.9 * tau[k] for k, v in theta0.items()})
    torch.testing.assert_close(_logits(_load(out)), expected, rtol=1e-5, atol=1e-5)  # complete and strict

    # provenance: the id as named, the revision asked, the commit used, each file's SHA-256
    (base_entry,) = _inputs(merged, "base")
    assert base_entry["input"] == BASE and base_entry["repo_id"] == BASE and "revision" not in base_entry
    assert base_entry["commit"] == commit_of("base")
    assert {f["file"]: f["sha256"] for f in base_entry["files"]} == {
        p.name: _sha256(p) for p in base.glob("*.safetensors")}
    main, tagged = _inputs(merged, "inputs")
    assert (main["commit"], tagged["input"], tagged["revision"], tagged["commit"]) == (
        commit_of("ft main"), f"{FT}@v1", "v1", V1)
    assert {f["sha256"] for f in tagged["files"]} == {_sha256(p) for p in ft1.glob("*.safetensors")}
    card = (out / "README.md").read_text()
    assert _front_matter(card)["base_model"] == BASE and commit_of("base") in card
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'  # the snapshot's files


def test_vector_by_commit_inspect_and_apply_a_vector_by_id(hub, cli, tmp_path):
    base, (_, ft1) = hub["base"], hub["ft"]
    tau = tmp_path / "tau.safetensors"
    assert cli("vector", "--base", BASE, "-o", tau, f"{FT}@{V1}", "-q").returncode == 0
    theta0, theta1 = _state(base), _state(ft1)
    written = load_file(tau)
    assert written.keys() == theta0.keys()
    for name, value in written.items():
        torch.testing.assert_close(value, theta1[name] - theta0[name], rtol=0, atol=0)
    (entry,) = _inputs(tau, "inputs")
    assert (entry["revision"], entry["commit"]) == (V1, V1)

    shown = cli("inspect", TAU, "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert Path(summary["path"]).name == "tau.safetensors" and summary["is_task_vector"]
    assert 0 < summary["nonzero_fraction"] <= 1

    out = tmp_path / "out"
    assert cli("apply", "--base", BASE, "--vector", TAU, "-s", "-1", "-o", f"{out}/", "-q").returncode == 0
    ft0_tau = load_file(hub["root"] / "tau" / "tau.safetensors")
    expected = _logits_with(base, {k: v - ft0_tau[k] for k, v in theta0.items()})
    torch.testing.assert_close(_logits(_load(out)), expected, rtol=1e-5, atol=1e-5)
    assert _inputs(out / "model-00001-of-00007.safetensors", "vector")[0]["repo_id"] == TAU


def test_convert_eval_and_finetune_by_id(hub, cli, tmp_path):
    import open_clip
    from clip_helpers import make_image_folder

    folder = tmp_path / "open-clip"
    result = cli("convert", HF_CLIP, "-o", f"{folder}/", "-m", TINY, "-q")
    assert result.returncode == 0, result.stderr
    (source,) = _inputs(folder / "open_clip_model.safetensors", "source")
    assert (source["file"], source["repo_id"], source["commit"]) == ("model.safetensors", HF_CLIP, commit_of("clip"))
    open_clip.create_model_and_transforms(TINY, pretrained=str(folder / "open_clip_model.safetensors"))

    add_snapshot(hub["cache"], OPEN_CLIP, folder, commit_of("open clip"))  # OpenCLIP's hub layout
    images = make_image_folder(tmp_path / "shapes", per_class=4, size=32)
    result = cli("eval", "-m", TINY, "-c", OPEN_CLIP, "-d", images, "-j", "0", "-q", "-b", "8")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)[0]
    pinned = f"{OPEN_CLIP}@{commit_of('open clip')}"  # named by the id, pinned to the commit evaluated
    assert evaluated["pretrained"] == pinned
    again = cli("eval", "-m", TINY, "-c", pinned, "-d", images, "-j", "0", "-q", "-b", "8")
    assert again.returncode == 0, again.stderr  # the recorded name reads back the same weights
    assert json.loads(again.stdout)[0]["metrics"] == evaluated["metrics"]

    sweep = tmp_path / "sweep"
    result = cli("finetune", "-m", TINY, "--pretrained", OPEN_CLIP, "-d", images, "-o", sweep, "--steps", "1",
                 "-b", "4", "-j", "0", "-q", "--warmup-steps", "0")
    assert result.returncode == 0, result.stderr
    started, converted = load_file(sweep / "base.safetensors"), load_file(folder / "open_clip_model.safetensors")
    assert started.keys() == converted.keys() and all(torch.equal(started[k], converted[k]) for k in converted)
    for checkpoint in sweep.glob("*.safetensors"):  # the base and the point name the repository and commit
        with safe_open(str(checkpoint), "pt") as handle:
            hub_origin = json.loads(handle.metadata()["negmerge.pretrained_hub"])
        assert hub_origin == {"repo_id": OPEN_CLIP, "commit": commit_of("open clip")}, checkpoint.name


def test_a_digest_comes_from_the_blob_name_unless_rehashed(hub, cli, tmp_path):
    """A weight file in the cache is stored under its SHA-256: taken from there, not hashed again
    (a lying name shows it); --rehash hashes the bytes."""
    real = _sha256(hub["root"] / "tau" / "tau.safetensors")
    for flags, expected in (((), LIE), (("--rehash",), real)):
        out = tmp_path / f"apply{len(flags)}.safetensors"
        assert cli("apply", "--base", BASE, "--vector", LYING, "-s", "1", "-o", out, "-q", *flags).returncode == 0
        assert _inputs(out, "vector")[0]["files"][0]["sha256"] == expected


def test_the_blob_shortcut_needs_a_link_into_the_repositorys_own_blobs(hub, tmp_path):
    import os

    from negmerge_cli.checkpoint.hub_cache import blob_digest

    snapshot = next((hub["cache"] / "models--tiny-org--llama-tau" / "snapshots").iterdir())
    linked = snapshot / "tau.safetensors"
    fd = os.open(linked, os.O_RDONLY)
    try:
        assert blob_digest(linked, fd) == _sha256(linked)
        assert blob_digest(hub["root"] / "tau" / "tau.safetensors", fd) is None  # not a snapshot path
    finally:
        os.close(fd)
    # a snapshot file that is a plain copy, or a link to another repository's blob
    foreign = tmp_path / "models--x--y" / "snapshots" / "c"
    foreign.mkdir(parents=True)
    shutil.copy(linked, foreign / "copy.safetensors")
    (foreign / "link.safetensors").symlink_to(linked.resolve())
    for path in (foreign / "copy.safetensors", foreign / "link.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert blob_digest(path, fd) is None
        finally:
            os.close(fd)


@pytest.mark.parametrize("named, fragments", [
    ("tiny-org/not-cached", ["tiny-org/not-cached", "not in the local cache", "HF_HUB_OFFLINE=1",
                             "hf download tiny-org/not-cached"]),
    (f"{BASE}@v9", [f"{BASE}@v9", "revision v9", "not in the local cache", "--revision v9"]),
    ("tiny-org/config-only", ["tiny-org/config-only", "holds no safetensors weights", "hf download"]),
    ("tiny-org/llama/extra", ["tiny-org/llama/extra", "no such file"]),  # not an id: a missing path, as before
    ("tiny-org/model.safetensors", ["tiny-org/model.safetensors", "no such file"]),
])
def test_an_id_that_cannot_be_had_fails_in_one_line(hub, cli, named, fragments, tmp_path):
    out = tmp_path / "out.safetensors"
    assert_clean_failure(cli("apply", "--base", named, "--vector", TAU, "-s", "1", "-o", out), *fragments)
    assert_clean_failure(cli("inspect", named), *fragments)
    assert not out.exists()


def test_a_local_path_wins_over_an_id_of_the_same_spelling(hub, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hub["root"] / "tau", tmp_path / "tiny-org" / "llama")  # ./tiny-org/llama: a vector folder
    summary = json.loads(cli("inspect", BASE, "--json").stdout)
    assert summary["is_task_vector"] and Path(summary["path"]).resolve().parent == (tmp_path / BASE).resolve()


def test_a_real_process_reads_the_offline_cache_from_its_environment(hub):
    result = run_cli("inspect", f"{FT}@v1", "--json")  # the environment offline_hub set
    assert result.returncode == 0, result.stderr
    assert f"snapshots/{V1}" in json.loads(result.stdout)["path"]


@pytest.mark.parametrize("text, parsed", [
    ("org/name", ("org/name", None)), ("org/name@v1.0", ("org/name", "v1.0")),
    ("Org-1/model.v2_x@refs/pr/3", ("Org-1/model.v2_x", "refs/pr/3")),
    ("name", None), ("/abs/path", None), ("./org/name", None), ("a/b/c", None), ("org/x.safetensors", None),
    ("org/a--b", None), ("org/-x", None), ("org/x.", None), ("org/name@", None), ("org/a..b", None),
])
def test_what_reads_as_a_hub_id(text, parsed):
    from negmerge_cli.checkpoint.hub import parse_id

    assert parse_id(text) == parsed


def test_a_lora_adapter_by_id_is_its_task_vector(hub, cli, tmp_path):
    pytest.importorskip("peft")
    from test_lora import _expected_deltas, _make_adapter

    adapter = tmp_path / "adapter"
    _make_adapter(_llama, adapter, seed=0, target_modules=["q_proj", "v_proj"])
    add_snapshot(hub["cache"], "tiny-org/llama-lora", adapter, commit_of("lora"))
    tau = tmp_path / "tau.safetensors"
    result = cli("vector", "--base", BASE, "-o", tau, "tiny-org/llama-lora", "-q")
    assert result.returncode == 0, result.stderr
    written, expected = load_file(tau), _expected_deltas(adapter)
    assert written.keys() == expected.keys()
    for name, delta in expected.items():
        torch.testing.assert_close(written[name], delta, rtol=1e-6, atol=1e-7)
    (entry,) = _inputs(tau, "inputs")
    assert entry["repo_id"] == "tiny-org/llama-lora" and {f["file"] for f in entry["files"]} == {
        "adapter_config.json", "adapter_model.safetensors"}


def test_results_name_a_snapshot_by_its_pinned_id(tmp_path):
    """What a Hub id resolves to (the snapshot folder, or the OpenCLIP weights at its top) is named
    ORG/NAME@COMMIT; anything else in or out of the cache keeps its path."""
    from negmerge_cli.checkpoint.hub_cache import pinned_id

    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / ("c" * 40)
    assert pinned_id(snapshot) == pinned_id(snapshot / "open_clip_model.safetensors") == f"org/name@{'c' * 40}"
    for kept in (snapshot / "model.safetensors", snapshot / "sub" / "open_clip_model.safetensors",
                 tmp_path / "snapshots" / "x", tmp_path / "plain.safetensors"):
        assert pinned_id(kept) == str(kept)
    assert pinned_id("openai") == "openai" and pinned_id(None) is None
