"""Tensor selection (--include/--exclude) and vectors that leave out their all-zero tensors, through
the real CLI (in process) with real safetensors files, checked against dense torch computations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dense_reference as ref
import pytest
import torch
from helpers import assert_clean_failure, tricky_tensor
from safetensors.torch import load_file, save_file

VISUAL = ("visual.proj", "visual.blocks.0.weight", "visual.blocks.0.bias")
TEXT = ("text.embed", "text.proj")
ZERO_KEY = "negmerge.zero_tensors"


@pytest.fixture
def clip_like(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A base and three image-encoder fine-tunes: visual.* changed, the text tower byte-identical,
    logit_scale changed by the first only, visual.blocks.0.bias left alone by the last."""
    generator = torch.Generator().manual_seed(7)
    shapes = {"visual.proj": (8, 6), "visual.blocks.0.weight": (10, 8), "visual.blocks.0.bias": (10,),
              "text.embed": (12, 4), "text.proj": (4, 6), "logit_scale": ()}
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    base["position_ids"] = torch.arange(5)
    base_path = tmp_path / "base.safetensors"
    save_file(base, str(base_path))
    finetuned = []
    for index in range(3):
        tensors = dict(base)
        for name in VISUAL:
            if not (index == 2 and name == "visual.blocks.0.bias"):
                tensors[name] = base[name] + 0.1 * tricky_tensor(shapes[name], generator)
        if index == 0:
            tensors["logit_scale"] = base["logit_scale"] + 0.5
        path = tmp_path / f"ft{index}.safetensors"
        save_file(tensors, str(path))
        finetuned.append(path)
    return base_path, finetuned


def metadata(path: Path) -> dict[str, str]:
    from negmerge_cli.checkpoint import open_checkpoint

    with open_checkpoint(path, digest=False) as checkpoint:
        return dict(checkpoint.metadata)


def densified(path: Path) -> dict[str, torch.Tensor]:
    """A vector's tensors with the ones it lists as zero filled in (as the tool reads them)."""
    tensors = load_file(str(path))
    zeros = json.loads(metadata(path).get(ZERO_KEY, "{}"))
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    for name, spec in zeros.items():
        assert name not in tensors
        tensors[name] = torch.zeros(spec["shape"], dtype=dtypes[spec["dtype"]])
    return tensors


def dense_taus(base: Path, finetuned: list[Path]) -> list[dict[str, torch.Tensor]]:
    b = load_file(str(base))
    return [{n: load_file(str(f))[n] - t for n, t in b.items() if t.is_floating_point()} for f in finetuned]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


# -- vectors hold what changed ---------------------------------------------------------------------


def test_vector_leaves_out_all_zero_tensors_and_keeps_them_on_request(clip_like, tmp_path, cli):
    base, finetuned = clip_like
    sparse, dense = tmp_path / "sparse.safetensors", tmp_path / "dense.safetensors"
    assert cli("vector", "-b", base, "-o", sparse, finetuned[0], "-q").returncode == 0
    assert cli("vector", "-b", base, "-o", dense, finetuned[0], "--keep-zero", "-q").returncode == 0
    expected = dense_taus(base, finetuned[:1])[0]

    stored = load_file(str(sparse))
    assert sorted(stored) == sorted([*VISUAL, "logit_scale"])
    assert json.loads(metadata(sparse)[ZERO_KEY]) == {
        "text.embed": {"dtype": "F32", "shape": [12, 4]}, "text.proj": {"dtype": "F32", "shape": [4, 6]}}
    assert same(densified(sparse), expected)
    hashes = [file["sha256"] for key in ("inputs", "base") for entry in json.loads(metadata(sparse)[f"negmerge.{key}"])
              for file in entry["files"]]
    assert hashes == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (finetuned[0], base)]  # skipped bytes too
    assert same(load_file(str(dense)), expected) and ZERO_KEY not in metadata(dense)
    assert sparse.stat().st_size < dense.stat().st_size

    # inspect reads both as the same vector: same non-zero fraction; the zeros are listed
    summaries = [json.loads(cli("inspect", "--json", path).stdout) for path in (sparse, dense)]
    assert summaries[0]["nonzero_fraction"] == pytest.approx(summaries[1]["nonzero_fraction"])
    assert [t["name"] for t in summaries[0]["zero_tensors"]] == list(TEXT)
    assert "2 all-zero tensors (72 elements) left out" in cli("inspect", sparse).stdout


def test_zero_means_exactly_zero(tmp_path, cli):
    """Signed zeros are zero; a change past the first probe is found; Inf - Inf is NaN, not zero."""
    size = 3 * 4096 + 5
    base = {"signed": torch.zeros(7), "late": torch.zeros(size), "inf": torch.full((3,), float("inf"))}
    finetuned = {"signed": -torch.zeros(7), "late": torch.zeros(size), "inf": base["inf"].clone()}
    finetuned["late"][-1] = 1e-30
    save_file(base, str(tmp_path / "b.safetensors"))
    save_file(finetuned, str(tmp_path / "f.safetensors"))
    out = tmp_path / "tau.safetensors"
    assert cli("vector", "-b", tmp_path / "b.safetensors", "-o", out, tmp_path / "f.safetensors",
               "--allow-nonfinite", "--max-memory", "1MB", "-q").returncode == 0
    stored = load_file(str(out))
    assert sorted(stored) == ["inf", "late"] and list(json.loads(metadata(out)[ZERO_KEY])) == ["signed"]
    assert stored["late"][-1] == 1e-30 and stored["inf"].isnan().all()


METHODS = [("negmerge",), ("mean",), ("sum",), ("magmax",), ("ties", "--density", "0.5"), ("dare", "--drop-rate", "0.3")]


@pytest.mark.parametrize("method", METHODS, ids=[m[0] for m in METHODS])
def test_merge_of_zero_omitted_vectors_equals_the_dense_merge(method, clip_like, tmp_path, cli):
    base, finetuned = clip_like
    sparse_dir, dense_dir = tmp_path / "sparse", tmp_path / "dense"
    assert cli("vector", "-b", base, "--out-dir", sparse_dir, *finetuned, "-q").returncode == 0
    assert cli("vector", "-b", base, "--out-dir", dense_dir, *finetuned, "--keep-zero", "-q").returncode == 0
    sparse_vectors = [sparse_dir / f.name for f in finetuned]
    assert "visual.blocks.0.bias" not in load_file(str(sparse_vectors[2]))  # zero in one input only
    outputs = {name: tmp_path / f"{name}.safetensors" for name in ("sparse", "dense", "fly")}
    assert cli("merge", "-m", *method, "-o", outputs["sparse"], *sparse_vectors, "-q").returncode == 0
    assert cli("merge", "-m", *method, "-o", outputs["dense"], *(dense_dir / f.name for f in finetuned),
               "--keep-zero", "-q").returncode == 0
    assert cli("merge", "-m", *method, "-b", base, "-o", outputs["fly"], *finetuned, "-q").returncode == 0

    dense = load_file(str(outputs["dense"]))
    assert same(densified(outputs["sparse"]), dense) and same(densified(outputs["fly"]), dense)
    # the text tower is zero in every input: left out of the merge too
    assert sorted(json.loads(metadata(outputs["sparse"])[ZERO_KEY])) == sorted(TEXT)
    assert "logit_scale" in load_file(str(outputs["sparse"]))
    if method[0] == "negmerge":
        taus = dense_taus(base, finetuned)
        for name in dense:
            assert torch.equal(dense[name], ref.negmerge([t[name] for t in taus])), name


def test_apply_with_a_zero_omitted_vector_equals_the_dense_arithmetic(clip_like, tmp_path, cli):
    base, finetuned = clip_like
    vector, out = tmp_path / "tau.safetensors", tmp_path / "out.safetensors"
    assert cli("vector", "-b", base, "-o", vector, finetuned[0], "-q").returncode == 0
    assert cli("apply", "-b", base, "-v", vector, "-s", "-0.7", "-o", out, "-q").returncode == 0
    theta, b, tau = load_file(str(out)), load_file(str(base)), dense_taus(base, finetuned[:1])[0]
    expected = {n: b[n] + (-0.7) * tau[n] if n in tau else b[n] for n in b}
    assert same(theta, expected)


def test_missing_as_zero_unchanged_for_genuinely_missing_tensors(tmp_path, cli):
    listed, stored, lacking = (tmp_path / f"{n}.safetensors" for n in ("listed", "stored", "lacking"))
    save_file({"a": torch.ones(3)}, str(listed), metadata={ZERO_KEY: json.dumps({"b": {"dtype": "F32", "shape": [2]}})})
    save_file({"a": torch.ones(3) * 3, "b": torch.tensor([2.0, -4.0])}, str(stored))
    save_file({"a": torch.ones(3) * 5}, str(lacking))
    out = tmp_path / "m.safetensors"
    assert cli("merge", "-m", "mean", "-o", out, listed, stored, "-q").returncode == 0  # listed: zero, not missing
    assert load_file(str(out))["b"].tolist() == [1.0, -2.0]
    assert_clean_failure(cli("merge", "-m", "mean", "-o", out, listed, stored, lacking, "--force"),
                         str(lacking), "'b'", "--missing-as-zero")
    assert cli("merge", "-m", "mean", "-o", out, listed, stored, lacking, "--missing-as-zero", "--force",
               "-q").returncode == 0
    merged = load_file(str(out))
    assert merged["a"].tolist() == [3.0] * 3 and merged["b"].tolist() == pytest.approx([2 / 3, -4 / 3])


HOSTILE_ZERO_LISTS = {
    "not-json": ("{", "not valid JSON"),
    "not-an-object": ("[1]", "not a JSON object"),
    "integer-dtype": ('{"b": {"dtype": "I32", "shape": [2]}}', "'b'", "not a floating-point dtype"),
    "bad-shape": ('{"b": {"dtype": "F32", "shape": [-1]}}', "'b'", "invalid shape"),
    "extra-field": ('{"b": {"dtype": "F32", "shape": [2], "x": 1}}', "'b'", "expected"),
    "also-stored": ('{"a": {"dtype": "F32", "shape": [3]}}', "'a'", "also stored"),
    "wrong-shape": ('{"b": {"dtype": "F32", "shape": [5]}}', "'b'", "shape"),
}


@pytest.mark.parametrize("case", HOSTILE_ZERO_LISTS)
def test_hostile_zero_tensor_lists_fail_cleanly(case, tmp_path, cli):
    text, *fragments = HOSTILE_ZERO_LISTS[case]
    bad, good, base = (tmp_path / f"{n}.safetensors" for n in ("bad", "good", "base"))
    save_file({"a": torch.ones(3)}, str(bad), metadata={ZERO_KEY: text})
    save_file({"a": torch.ones(3), "b": torch.ones(2)}, str(good))
    save_file({"a": torch.ones(3), "b": torch.ones(2)}, str(base))
    out = tmp_path / "out.safetensors"
    runs = [["merge", "-o", out, good, bad], ["apply", "-b", base, "-v", bad, "-s", "1", "-o", out]]
    if case != "wrong-shape":  # alone, any shape is a valid one
        runs.append(["inspect", bad])
    for args in runs:
        result = cli(*args)
        assert_clean_failure(result, str(bad), *fragments)
        assert not out.exists()


# -- tensor selection ------------------------------------------------------------------------------


def test_selection_in_vector_merge_and_apply(clip_like, tmp_path, cli):
    base, finetuned = clip_like
    b, taus = load_file(str(base)), dense_taus(base, finetuned)
    select = ["--include", "visual.*", "--include", "logit_scale", "--exclude", "*.bias"]
    picked = ["visual.proj", "visual.blocks.0.weight", "logit_scale"]

    vector = tmp_path / "tau.safetensors"
    assert cli("vector", "-b", base, "-o", vector, finetuned[0], *select, "-q").returncode == 0
    assert same(load_file(str(vector)), {n: taus[0][n] for n in picked})  # left out: absent, not zero
    meta = metadata(vector)
    assert json.loads(meta["negmerge.include"]) == ["visual.*", "logit_scale"]
    assert json.loads(meta["negmerge.exclude"]) == ["*.bias"] and ZERO_KEY not in meta

    merged = tmp_path / "merged.safetensors"
    assert cli("merge", "-m", "negmerge", "-b", base, "-o", merged, *finetuned, *select, "-q").returncode == 0
    assert same(load_file(str(merged)), {n: ref.negmerge([t[n] for t in taus]) for n in picked})
    from_vectors = tmp_path / "from_vectors.safetensors"
    full = [tmp_path / f"full{i}.safetensors" for i in range(3)]
    for path, source in zip(full, finetuned):
        assert cli("vector", "-b", base, "-o", path, source, "--keep-zero", "-q").returncode == 0
    assert cli("merge", "-o", from_vectors, *full, *select, "-q").returncode == 0
    assert same(load_file(str(from_vectors)), load_file(str(merged)))

    # apply only the selected tensors of a full vector; every other tensor is the base's, bit for bit
    out = tmp_path / "out.safetensors"
    assert cli("apply", "-b", base, "-v", full[0], "-s", "-0.5", "-o", out, "--include", "visual.blocks.*",
               "-q").returncode == 0
    theta = load_file(str(out))
    changed = {"visual.blocks.0.weight", "visual.blocks.0.bias"}
    assert same(theta, {n: b[n] + (-0.5) * taus[0][n] if n in changed else b[n] for n in b})
    assert json.loads(metadata(out)["negmerge.include"]) == ["visual.blocks.*"]


def test_inspect_shows_the_selection(clip_like, tmp_path, cli):
    base, finetuned = clip_like
    summary = json.loads(cli("inspect", "--json", base, "--include", "visual.*", "--exclude", "*.proj").stdout)
    assert [t["name"] for t in summary["tensors"]] == ["visual.blocks.0.bias", "visual.blocks.0.weight"]
    assert summary["tensor_count"] == 2 and summary["numel"] == 90 and summary["tensor_bytes"] == 360
    assert summary["params_by_dtype"] == {"F32": 90}

    vector = tmp_path / "tau.safetensors"
    assert cli("vector", "-b", base, "-o", vector, finetuned[2], "-q").returncode == 0
    text = json.loads(cli("inspect", "--json", vector, "--include", "text.*").stdout)
    assert text["tensors"] == [] and [t["name"] for t in text["zero_tensors"]] == list(TEXT)
    table = cli("inspect", vector, "--include", "visual.*").stdout
    assert "visual.proj" in table and "text.embed" not in table and "--include 'visual.*'" in table


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_globs_matching_nothing_fail_cleanly(flag, clip_like, tmp_path, cli):
    base, finetuned = clip_like
    vector, out = tmp_path / "tau.safetensors", tmp_path / "out.safetensors"
    assert cli("vector", "-b", base, "-o", vector, finetuned[0], "-q").returncode == 0
    runs = [
        ["vector", "-b", base, "-o", out, finetuned[0]],
        ["merge", "-o", out, vector, vector],
        ["merge", "-b", base, "-o", out, *finetuned],
        ["apply", "-b", base, "-v", vector, "-s", "-1", "-o", out],
        ["inspect", vector],
    ]
    for args in runs:
        result = cli(*args, flag, "visual.*", flag, "vision.*")
        assert_clean_failure(result, flag, "'vision.*'", "matches no tensor")
        assert not out.exists() and result.stdout == ""


def test_a_selection_that_leaves_nothing_fails_cleanly(clip_like, tmp_path, cli):
    base, finetuned = clip_like
    vector, out = tmp_path / "tau.safetensors", tmp_path / "out.safetensors"
    assert cli("vector", "-b", base, "-o", vector, finetuned[0], "-q").returncode == 0
    nothing = ["--include", "visual.*", "--exclude", "visual.*"]
    for args in (["vector", "-b", base, "-o", out, finetuned[0]], ["merge", "-o", out, vector],
                 ["apply", "-b", base, "-v", vector, "-s", "1", "-o", out], ["inspect", base]):
        assert_clean_failure(cli(*args, *nothing), "--include 'visual.*' --exclude 'visual.*'", "leaves no")
        assert not out.exists()
    # an integer buffer is not part of a vector: selecting only it leaves nothing either
    assert_clean_failure(cli("vector", "-b", base, "-o", out, finetuned[0], "--include", "position_ids"),
                         "leaves no floating-point tensor")
    # the text tensors the vector left out as zero are still its tensors: applying only them is
    # allowed, and gives the base, as base + scale * 0 does
    assert cli("apply", "-b", base, "-v", vector, "-s", "1", "-o", out, "--include", "text.*", "-q").returncode == 0
    assert same(load_file(str(out)), load_file(str(base)))


def test_selection_value_object():
    from negmerge_cli.arithmetic.selection import TensorSelection
    from negmerge_cli.core.errors import UsageError

    selection = TensorSelection(include=["visual.*"], exclude=("*.bias",))
    assert selection.include == ("visual.*",)
    assert selection.matches("visual.blocks.0.weight") and not selection.matches("visual.blocks.0.bias")
    assert not selection.matches("text.proj") and TensorSelection().matches("anything")
    assert TensorSelection(include="a*").include == ("a*",)  # one glob, not one per character
    assert selection.metadata() == {"negmerge.include": '["visual.*"]', "negmerge.exclude": '["*.bias"]'}
    with pytest.raises(UsageError, match="include"):
        TensorSelection(include=("",))
    with pytest.raises(UsageError, match="exclude 'x.*': matches no tensor"):
        TensorSelection(exclude=("x.*",)).check_globs(["a", "b"])


def test_library_calls_take_the_selection(clip_like, tmp_path):
    from negmerge_cli.arithmetic.selection import TensorSelection
    from negmerge_cli.stages import StreamOptions, inspect_checkpoint, make_vector, merge_vectors

    base, finetuned = clip_like
    selection = TensorSelection(include=("visual.proj",))
    make_vector(base, finetuned[0], tmp_path / "v.safetensors", StreamOptions(device="cpu"), selection)
    assert list(load_file(str(tmp_path / "v.safetensors"))) == ["visual.proj"]
    merge_vectors(finetuned, tmp_path / "m.safetensors", "mean", base=base, selection=selection,
                  options=StreamOptions(device="cpu", keep_zero=True))
    assert list(load_file(str(tmp_path / "m.safetensors"))) == ["visual.proj"]
    assert [t.name for t in inspect_checkpoint(base, selection=selection).tensors] == ["visual.proj"]
