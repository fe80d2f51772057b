"""Hostile inputs through the real CLI, one table row per case, every checkpoint-reading command.

A refused input must give a non-zero exit and exactly one ``error:`` line naming the file (and the
tensor where there is one), no traceback, and leave no trace: no output, no temporary file, every
input and any earlier output byte-identical. Odd but legitimate inputs (fp8, 0-d, empty, integer
and bool tensors, mixed dtypes, duplicate inputs, symlinks) must keep working, with the values of a
dense torch computation.

Most rows run the CLI in this process (the ``cli`` fixture); special files that could block run a
real subprocess with a timeout, so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable

import dense_reference as ref
import pytest
import torch
from helpers import assert_clean_failure, run_cli
from hostile_files import entry, sharded, snapshot, special_file, write_raw
from safetensors.torch import load_file, save_file

# Builds a hostile input in a folder: (path given to the CLI, path the error must name, fragments).
Build = Callable[[Path], tuple[Path, Path, tuple[str, ...]]]


def header(text: str, *fragments: str, data: bytes = b"\0" * 8) -> Build:
    def build(folder: Path):
        path = write_raw(folder / "hostile.safetensors", text, data)
        return path, path, fragments
    return build


def index(text: str | dict, *fragments: str, shards: dict | None = None, named: str | None = None) -> Build:
    def build(folder: Path):
        path = sharded(folder / "sharded", text, shards)
        return path, path.parent / named if named else path, fragments
    return build


def special(make: Callable[[Path], tuple[Path, Path]], *fragments: str) -> Build:
    def build(folder: Path):
        return (*make(folder), fragments)
    return build


def _directory_shard(folder: Path) -> tuple[Path, Path]:
    path = sharded(folder / "sharded", {"weight_map": {"a": "s1.safetensors", "b": "sub"}})
    (path.parent / "sub").mkdir()
    return path, path.parent / "sub"


def _device_link(folder: Path) -> tuple[Path, Path]:
    link = folder / "zero.safetensors"
    link.symlink_to("/dev/zero")
    return link, link


def _socket(folder: Path) -> tuple[Path, Path]:
    path = special_file(folder / "socket.safetensors", stat.S_IFSOCK)
    return path, path


def one(**fields: str) -> str:
    """A header holding one tensor 'w' with the given raw JSON fields."""
    return f'{{"w": {entry(**fields)}}}'


W = entry()
DEEP = "[" * 200_000 + "]" * 200_000
GOOD_MAP = {"a": "s1.safetensors", "b": "s2.safetensors"}

CASES: dict[str, Build] = {
    # malformed JSON in a safetensors header
    "header-dtype-list": header(one(dtype='["F32"]'), "'w'", "unsupported dtype"),
    "header-dtype-object": header(one(dtype="{}"), "'w'", "unsupported dtype"),
    "header-nested-200k-deep": header(f'{{"w": {DEEP}}}', "header is nested too deeply"),
    "header-5000-digit-int": header(one(shape="[" + "1" * 5000 + "]"), "5000 digits"),
    "header-duplicate-tensor": header(f'{{"w": {W}, "w": {W}}}', "duplicate key 'w'"),
    "header-duplicate-field": header('{"w": {"dtype": "F16", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                     "duplicate key 'dtype'"),
    "header-dim-2**64": header(one(shape=f"[{2**64}, 0]", offsets="[0, 0]"), "'w'", "invalid shape",
                               data=b""),
    "header-dims-overflow-int64": header(one(shape=f"[{2**62}, {2**62}, 0]", offsets="[0, 0]"),
                                         "'w'", "invalid shape", data=b""),
    "header-dim-negative": header(one(shape="[-2]"), "'w'", "invalid shape"),
    "header-dim-bool": header(one(shape="[true, 2]"), "'w'", "invalid shape"),
    "header-dim-float": header(one(shape="[2.0]"), "'w'", "invalid shape"),
    "header-dim-nan": header(one(shape="[NaN]"), "NaN"),
    "header-offsets-strings": header(one(offsets='["0", "8"]'), "'w'", "invalid data_offsets"),
    "header-offsets-floats": header(one(offsets="[0.0, 8.0]"), "'w'", "invalid data_offsets"),
    "header-offsets-infinity": header(one(offsets="[0, Infinity]"), "Infinity"),
    "header-metadata-number": header(f'{{"__metadata__": {{"k": 1}}, "w": {W}}}', "__metadata__"),
    "header-metadata-object": header(f'{{"__metadata__": {{"k": {{"a": "b"}}}}, "w": {W}}}', "__metadata__"),
    "header-metadata-list": header(f'{{"__metadata__": ["k"], "w": {W}}}', "__metadata__"),
    "header-not-an-object": header("[1, 2]", "not a JSON object", data=b""),
    # malformed sharded indexes
    "index-empty-weight-map": index({"weight_map": {}}, "lists no tensors"),
    "index-shard-empty-name": index({"weight_map": {"a": ""}}, "'a'", "not a plain file name"),
    "index-shard-dotdot": index({"weight_map": {"a": ".."}}, "'a'", "not a plain file name"),
    "index-shard-slash": index({"weight_map": {"a": "sub/s1.safetensors"}}, "'a'", "not a plain file name"),
    "index-shard-nul": index({"weight_map": {"a": "s1\0.safetensors"}}, "'a'", "not a plain file name"),
    "index-shard-not-a-string": index({"weight_map": {"a": 1}}, "'a'", "not a plain file name"),
    "index-unlisted-tensor": index({"weight_map": {"a": "s1.safetensors"}}, "'x'", "not listed in the index",
                                   shards={"s1.safetensors": {"a": torch.ones(2), "x": torch.ones(1)}},
                                   named="s1.safetensors"),
    "index-metadata-list": index({"metadata": [1], "weight_map": GOOD_MAP}, "'metadata'"),
    "index-metadata-string": index({"metadata": "big", "weight_map": GOOD_MAP}, "'metadata'"),
    "index-nested-200k-deep": index(f'{{"weight_map": {DEEP}}}', "index is nested too deeply"),
    "index-5000-digit-int": index(f'{{"metadata": {{"total_size": {"1" * 5000}}}, '
                                  f'"weight_map": {json.dumps(GOOD_MAP)}}}', "5000 digits"),
    "index-duplicate-tensor": index('{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", '
                                    '"a": "s1.safetensors"}}', "duplicate key 'a'"),
    "index-not-an-object": index("[]", "not a JSON object"),
    # special files that cannot block (the blocking ones are in FIFO_CASES below)
    "shard-is-a-directory": special(_directory_shard, "not a regular file (directory)"),
    "character-device": special(_device_link, "not a regular file (character device)"),
    "socket": special(_socket, "not a regular file (socket)"),
}

# Every command that reads checkpoints, the hostile input in each role; (bad, good, out) -> args.
# The apply forms replace an earlier output (--force), which must survive the failure unchanged.
FORMS: dict[str, Callable[[Path, Path, Path], list]] = {
    "inspect": lambda bad, good, out: ["inspect", "--nonzero", bad],
    "vector": lambda bad, good, out: ["vector", "-b", good, "-o", out, bad],
    "vector-base": lambda bad, good, out: ["vector", "-b", bad, "-o", out, good],
    "merge": lambda bad, good, out: ["merge", "-o", out, good, bad],
    "merge-base": lambda bad, good, out: ["merge", "--base", bad, "-o", out, good, good],
    "apply-base": lambda bad, good, out: ["apply", "-b", bad, "-v", good, "-s", "-1", "-o", out, "--force"],
    "apply-vector": lambda bad, good, out: ["apply", "-b", good, "-v", bad, "-s", "-1", "-o", out, "--force"],
}


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a folder for hostile inputs, a valid checkpoint, the output path, which already exists)."""
    (tmp_path / "inputs").mkdir()
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(2), "b": torch.ones(3)}, str(good))
    out = tmp_path / "out" / "result.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"an earlier result")
    return tmp_path / "inputs", good, out


def command(form: str, bad: Path, good: Path, out: Path) -> list:
    """The form's arguments; forms without --force write to a new path beside the earlier output."""
    args = FORMS[form](bad, good, out)
    return args if "--force" in args else FORMS[form](bad, good, out.with_name("fresh.safetensors"))


def assert_refused(result, root: Path, before: dict[str, str], *fragments: str) -> None:
    assert_clean_failure(result, *fragments)
    assert snapshot(root) == before  # no output, no temporary file, nothing changed


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_refused_cleanly(case, form, workspace, tmp_path, cli):
    folder, good, out = workspace
    bad, named, fragments = CASES[case](folder)
    before = snapshot(tmp_path)
    assert_refused(cli(*command(form, bad, good, out)), tmp_path, before, str(named), *fragments)


def _fifo_shard(folder: Path) -> tuple[Path, Path]:
    path = sharded(folder / "sharded", {"weight_map": GOOD_MAP}, {"s1.safetensors": {"a": torch.ones(2)}})
    return path, special_file(path.parent / "s2.safetensors")


def _fifo_member(folder: Path) -> tuple[Path, Path]:
    return folder / "model", special_file(folder / "model" / "model.safetensors")


def _fifo_index(folder: Path) -> tuple[Path, Path]:
    path = special_file(folder / "model.safetensors.index.json")
    return path, path


def _fifo_link(folder: Path) -> tuple[Path, Path]:
    link = folder / "link.safetensors"
    link.symlink_to(special_file(folder / "fifo"))
    return link, link


# A FIFO in every place a checkpoint file is read, each through another command (real subprocesses).
FIFO_CASES = {
    "fifo-checkpoint": (lambda folder: (special_file(folder / "f.safetensors"),) * 2, "inspect"),
    "fifo-shard": (_fifo_shard, "merge"),
    "fifo-index": (_fifo_index, "apply-vector"),
    "fifo-folder-member": (_fifo_member, "vector"),
    "fifo-behind-symlink": (_fifo_link, "merge-base"),
}


@pytest.mark.parametrize("case", FIFO_CASES)
def test_fifo_is_refused_without_blocking(case, workspace, tmp_path):
    folder, good, out = workspace
    make, form = FIFO_CASES[case]
    bad, named = make(folder)
    before = snapshot(tmp_path)
    result = run_cli(*command(form, bad, good, out), timeout=30)
    assert_refused(result, tmp_path, before, str(named), "not a regular file (FIFO)")


RANGE = "between 1 byte and 1 EiB"
SIZES = {  # case -> (option, value, reason)
    "max-memory-400-digits": ("--max-memory", "9" * 400, RANGE),
    "shard-size-400-digits": ("--shard-size", "9" * 400, RANGE),
    "max-memory-1e400": ("--max-memory", "1e400", RANGE),
    "shard-size-huge-exponent": ("--shard-size", "1e99999999999999999999999", RANGE),
    "max-memory-above-1EiB": ("--max-memory", "2e18", RANGE),
    "shard-size-below-one-byte": ("--shard-size", "0.4", RANGE),
    "max-memory-inf": ("--max-memory", "inf", "not a size"),
    "shard-size-nan": ("--shard-size", "nan", "not a size"),
}


@pytest.mark.parametrize("form", ["vector", "merge", "apply-vector"])
@pytest.mark.parametrize("case", SIZES)
def test_size_option_out_of_range_is_refused(case, form, workspace, tmp_path, cli):
    _, good, out = workspace
    option, value, reason = SIZES[case]
    before = snapshot(tmp_path)
    result = cli(*command(form, good, good, out), option, value)
    assert_refused(result, tmp_path, before, f"{option} {value!r}", reason)
    assert result.returncode == 2  # a usage error


def test_size_options_take_exponents(vectors, tmp_path, cli):
    plain, sized = tmp_path / "plain.safetensors", tmp_path / "sized" / "m.safetensors"
    assert cli("merge", "-o", plain, *vectors, "-q").returncode == 0
    assert cli("merge", "-o", sized, "--max-memory", "1.5e6", "--shard-size", "1e4", *vectors, "-q").returncode == 0
    shards = json.loads((sized.parent / "m.safetensors.index.json").read_text())["weight_map"]
    merged = {name: t for shard in set(shards.values()) for name, t in load_file(str(sized.parent / shard)).items()}
    expected = load_file(str(plain))
    assert merged.keys() == expected.keys() and all(torch.equal(merged[n], expected[n]) for n in merged)


# -- fp8 --------------------------------------------------------------------------------------------

FP8 = {torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}  # dtype -> code in the file


def fp8_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random fp8 values with exact zeros of both signs."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator)
    values[torch.rand(shape, generator=generator) < 0.2] = 0.0
    values[torch.rand(shape, generator=generator) < 0.1] = -0.0
    return values.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", FP8, ids=list(FP8.values()))
def test_fp8_inspect_counts_nonzero(dtype, tmp_path, cli):
    tensor = fp8_tensor((50, 40), dtype, seed=0)
    save_file({"w": tensor}, str(tmp_path / "f8.safetensors"))
    result = cli("inspect", "--json", "--nonzero", tmp_path / "f8.safetensors")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["tensors"][0]
    assert summary["dtype"] == FP8[dtype]
    assert summary["nonzero"] == int((tensor.float() != 0).sum())


@pytest.mark.parametrize("dtype", FP8, ids=list(FP8.values()))
def test_fp8_merge_matches_dense(dtype, tmp_path, cli):
    taus = [fp8_tensor((30, 20), dtype, seed=i) for i in range(3)]
    paths = []
    for i, tau in enumerate(taus):
        paths.append(tmp_path / f"tau{i}.safetensors")
        save_file({"w": tau}, str(paths[-1]))
    expected = ref.negmerge([t.float() for t in taus])
    native, wide = tmp_path / "native.safetensors", tmp_path / "wide.safetensors"
    assert cli("merge", "-o", native, *paths, "-q").returncode == 0
    assert cli("merge", "-o", wide, "--dtype", "float32", *paths, "-q").returncode == 0
    assert same_bits(load_file(str(native))["w"], expected.to(dtype))  # computed wide, stored as fp8
    assert torch.equal(load_file(str(wide))["w"], expected)


def test_fp8_mixed_with_other_dtypes_merges_wide(tmp_path, cli):
    inputs = {torch.float8_e4m3fn: fp8_tensor((64,), torch.float8_e4m3fn, 1),
              torch.float8_e5m2: fp8_tensor((64,), torch.float8_e5m2, 2),
              torch.float32: torch.randn(64, generator=torch.Generator().manual_seed(3))}
    paths = {}
    for dtype, tensor in inputs.items():
        paths[dtype] = tmp_path / f"{str(dtype)[6:]}.safetensors"
        save_file({"w": tensor}, str(paths[dtype]))
    both_fp8, all_three = tmp_path / "both.safetensors", tmp_path / "all.safetensors"
    assert cli("merge", "-m", "sum", "-o", both_fp8, *list(paths.values())[:2], "-q").returncode == 0
    assert cli("merge", "-m", "sum", "-o", all_three, *paths.values(), "-q").returncode == 0
    floats = [t.float() for t in inputs.values()]
    assert torch.equal(load_file(str(both_fp8))["w"], ref.sequential_sum(floats[:2]).half())  # both fit in fp16
    assert torch.equal(load_file(str(all_three))["w"], ref.sequential_sum(floats))


def test_fp8_apply_copies_untouched_fp8_bytes_and_computes_touched_ones(tmp_path, cli):
    base = {"kept": fp8_tensor((40,), torch.float8_e4m3fn, 4), "touched": fp8_tensor((40,), torch.float8_e5m2, 5),
            "w": torch.randn(40, generator=torch.Generator().manual_seed(6))}
    tau = {"touched": torch.randn(40, generator=torch.Generator().manual_seed(7)),
           "w": torch.randn(40, generator=torch.Generator().manual_seed(8))}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tau, str(tmp_path / "tau.safetensors"))
    out = tmp_path / "out.safetensors"
    assert cli("apply", "-b", tmp_path / "base.safetensors", "-v", tmp_path / "tau.safetensors", "-s", "-0.5",
               "-o", out, "-q").returncode == 0
    theta = load_file(str(out))
    assert same_bits(theta["kept"], base["kept"])
    assert same_bits(theta["touched"], (base["touched"].float() + tau["touched"] * -0.5).to(torch.float8_e5m2))
    assert torch.equal(theta["w"], base["w"] + tau["w"] * -0.5)


def test_fp8_vector(tmp_path, cli):
    base, finetuned = fp8_tensor((33,), torch.float8_e4m3fn, 9), fp8_tensor((33,), torch.float8_e4m3fn, 10)
    save_file({"w": base}, str(tmp_path / "base.safetensors"))
    save_file({"w": finetuned}, str(tmp_path / "ft.safetensors"))
    out = tmp_path / "tau.safetensors"
    assert cli("vector", "-b", tmp_path / "base.safetensors", "-o", out, "--dtype", "float32",
               tmp_path / "ft.safetensors", "-q").returncode == 0
    assert torch.equal(load_file(str(out))["w"], finetuned.float() - base.float())


# -- odd but legitimate inputs ------------------------------------------------------------------------

def test_apply_copies_0d_empty_integer_and_bool_tensors(tmp_path, cli):
    base = {"w": torch.randn(5), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
            "ids": torch.arange(7), "count": torch.tensor(3, dtype=torch.int32),
            "none": torch.zeros(0, dtype=torch.int8), "mask": torch.tensor([True, False, True]),
            "flag": torch.tensor(True), "u16": torch.arange(4).to(torch.uint16)}
    tau = {"w": torch.randn(5), "scalar": torch.tensor(1.0), "empty": torch.zeros(0, 4)}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tau, str(tmp_path / "tau.safetensors"))
    out = tmp_path / "out.safetensors"
    assert cli("apply", "-b", tmp_path / "base.safetensors", "-v", tmp_path / "tau.safetensors", "-s", "2",
               "-o", out, "-q").returncode == 0
    theta = load_file(str(out))
    assert theta.keys() == base.keys()
    for name in ("ids", "count", "none", "mask", "flag", "u16"):
        assert theta[name].dtype == base[name].dtype and torch.equal(theta[name], base[name]), name
    for name in tau:
        assert theta[name].shape == base[name].shape and torch.equal(theta[name], base[name] + tau[name] * 2), name


def test_duplicate_inputs_and_mixed_float_dtypes(tmp_path, cli):
    generator = torch.Generator().manual_seed(11)
    tensors = {dtype: torch.randn(6, 5, generator=generator).to(dtype)
               for dtype in (torch.float16, torch.bfloat16, torch.float32)}
    paths = []
    for dtype, tensor in tensors.items():
        paths.append(tmp_path / f"{str(dtype)[6:]}.safetensors")
        save_file({"w": tensor, "ids": torch.arange(3)}, str(paths[-1]))
    vectors = []
    for path in paths:  # drop the int buffer: task vectors hold floats only
        vectors.append(path.with_suffix(".vec.safetensors"))
        save_file({"w": load_file(str(path))["w"]}, str(vectors[-1]))
    mixed, twice, zero, on_the_fly = (tmp_path / f"{n}.safetensors" for n in ("mixed", "twice", "zero", "fly"))
    assert cli("merge", "-m", "mean", "-o", mixed, *vectors, "-q").returncode == 0
    assert cli("merge", "-m", "mean", "-o", twice, vectors[0], vectors[0], "-q").returncode == 0
    # all-zero results are written only with --keep-zero (tests/arithmetic/test_selection.py: left out by default);
    # a fine-tune that changed no weight (only its int buffer), since the base itself is refused as one
    unchanged = [path.with_suffix(".same.safetensors") for path in paths]
    for path, twin in zip(paths, unchanged):
        save_file({"w": load_file(str(path))["w"], "ids": torch.arange(3) + 1}, str(twin))
    assert cli("vector", "-b", paths[1], "-o", zero, unchanged[1], "--keep-zero", "-q").returncode == 0
    assert cli("merge", "--base", paths[2], "-o", on_the_fly, unchanged[2], unchanged[2], "--keep-zero",
               "-q").returncode == 0
    floats = [t.float() for t in tensors.values()]
    torch.testing.assert_close(load_file(str(mixed))["w"], ref.mean(floats), rtol=1e-6, atol=1e-7)
    assert torch.equal(load_file(str(twice))["w"], tensors[torch.float16])
    assert torch.equal(load_file(str(zero))["w"], torch.zeros(6, 5, dtype=torch.bfloat16))
    assert torch.equal(load_file(str(on_the_fly))["w"], torch.zeros(6, 5))


def test_symlinks_to_regular_files_keep_working(tmp_path, cli):
    index = sharded(tmp_path / "real", {"weight_map": GOOD_MAP})
    shard_link = tmp_path / "linked" / "s2.safetensors"
    shard_link.parent.mkdir()
    shard_link.symlink_to(index.parent / "s2.safetensors")
    os.symlink(index.parent / "s1.safetensors", tmp_path / "linked" / "s1.safetensors")
    (tmp_path / "linked" / index.name).symlink_to(index)
    file_link = tmp_path / "file-link.safetensors"
    file_link.symlink_to(index.parent / "s1.safetensors")
    for source in (tmp_path / "linked", tmp_path / "linked" / index.name, file_link):
        result = cli("inspect", "--json", "--nonzero", source)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["numel"] == (5 if source != file_link else 2)
