"""The SHA-256 digest cache: each file version hashed once, outputs recorded as they are written,
invalidation by identity (device, inode, size, mtime_ns), --rehash, damaged entries, two merges at
once; and the merge's NaN/Inf check on the running sum."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dense_reference as ref
import pytest
import torch
from helpers import assert_clean_failure, make_vectors
from safetensors.torch import load_file, save_file

from negmerge_cli.checkpoint import digests
from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.checkpoint.provenance import HASH_PLACEHOLDER
from negmerge_cli.checkpoint.writer import OutputTensor, StreamingWriter
from negmerge_cli.stages import StreamOptions, apply_vector, make_vector, merge_vectors

SHAPES = {"w": (300, 200), "b": (200,)}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh digest cache for each test (also for the CLI subprocesses it starts)."""
    monkeypatch.setenv(digests.ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache" / "sha256"


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded_inputs(output: Path, key: str = "inputs") -> dict[str, str]:
    with open_checkpoint(output, digest=False) as checkpoint:
        return {file["file"]: file["sha256"] for item in json.loads(checkpoint.metadata["negmerge." + key])
                for file in item["files"]}


def cached(path: Path) -> str | None:
    """What the cache says about the current version of ``path``."""
    return digests.lookup(digests.Identity.of(os.stat(path)))


def needs_hashing(path: Path, rehash: bool = False) -> bool:
    with open_checkpoint(path, rehash=rehash) as checkpoint:
        return checkpoint.files[0].needs_hashing


def merge(inputs: list[Path], out: Path, **options) -> None:
    merge_vectors(inputs, out, options=StreamOptions(device="cpu", force=True, **options))


def test_recorded_digests_are_sha256sum_cold_and_warm(tmp_path):
    inputs = make_vectors(tmp_path / "in", 3, SHAPES)
    assert all(needs_hashing(p) for p in inputs)  # cold: nothing cached yet
    merge(inputs, tmp_path / "cold.safetensors")
    expected = {p.name: sha256sum(p) for p in inputs}
    assert recorded_inputs(tmp_path / "cold.safetensors") == expected
    assert all(cached(p) == expected[p.name] for p in inputs)
    assert not any(needs_hashing(p) for p in inputs)  # warm: no input is hashed again
    merge(inputs, tmp_path / "warm.safetensors")
    assert recorded_inputs(tmp_path / "warm.safetensors") == expected
    # the warm run's header was final from the start: its digest came from the bytes as written
    for out in (tmp_path / "cold.safetensors", tmp_path / "warm.safetensors"):
        assert cached(out) == sha256sum(out)


def test_outputs_are_hash_free_inputs_of_the_next_stage(tmp_path, model_files):
    base, finetuned = model_files
    options = StreamOptions(device="cpu")
    vector = make_vector(base, finetuned[0], tmp_path / "tau.safetensors", options).outputs[0]
    merged = merge_vectors([vector, vector], tmp_path / "m.safetensors", options=options).outputs[0]
    unlearned = apply_vector(base, merged, -0.5, tmp_path / "u.safetensors", options).outputs[0]
    for output in (vector, merged, unlearned):
        assert not needs_hashing(output)
        assert cached(output) == sha256sum(output)
    assert recorded_inputs(merged) == {"tau.safetensors": sha256sum(vector)}
    assert recorded_inputs(unlearned, "vector") == {"m.safetensors": sha256sum(merged)}
    assert recorded_inputs(unlearned, "base") == {base.name: sha256sum(base)}


def test_sharded_outputs_are_recorded_shard_by_shard(tmp_path):
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    out = tmp_path / "sharded" / "m.safetensors"
    merge_vectors(inputs, out, options=StreamOptions(device="cpu", shard_size="100KB"))
    shards = sorted(out.parent.glob("m-*.safetensors"))
    assert len(shards) > 1 and all(cached(s) == sha256sum(s) for s in shards)


def _rewrite_in_place_keeping_size(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["w"] = -tensors["w"]
    data = _serialized(tensors)
    assert len(data) == path.stat().st_size
    with open(path, "r+b") as handle:  # same inode, same size: only the mtime tells
        handle.write(data)


def _serialized(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


@pytest.mark.parametrize("change", ["modify in place, same size", "touch", "replace by rename"])
def test_a_changed_file_is_hashed_again(tmp_path, change):
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    merge(inputs, tmp_path / "first.safetensors")
    changed = inputs[0]
    before = os.stat(changed)
    if change == "touch":
        os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    elif change == "replace by rename":
        replacement = tmp_path / "replacement.safetensors"
        replacement.write_bytes(_serialized({k: v * 2 for k, v in load_file(str(changed)).items()}))
        os.replace(replacement, changed)
    else:
        _rewrite_in_place_keeping_size(changed)
    after = os.stat(changed)
    assert digests.Identity.of(after) != digests.Identity.of(before), "the change must show in the identity"
    assert needs_hashing(changed)
    merge(inputs, tmp_path / "second.safetensors")
    assert recorded_inputs(tmp_path / "second.safetensors")[changed.name] == sha256sum(changed)
    assert cached(changed) == sha256sum(changed)
    assert recorded_inputs(tmp_path / "second.safetensors")[inputs[1].name] == sha256sum(inputs[1])


def test_rehash_recomputes_what_the_cache_cannot_see(tmp_path, cli):
    """The documented blind spot: same size and mtime restored. --rehash hashes afresh (and fixes
    the cache); without it the stale digest is used."""
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    merge(inputs, tmp_path / "first.safetensors")
    old_digest = sha256sum(inputs[0])
    before = os.stat(inputs[0])
    _rewrite_in_place_keeping_size(inputs[0])
    os.utime(inputs[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert not needs_hashing(inputs[0])  # the identity is unchanged: the cache trusts it
    merge(inputs, tmp_path / "stale.safetensors")
    assert recorded_inputs(tmp_path / "stale.safetensors")[inputs[0].name] == old_digest != sha256sum(inputs[0])
    assert needs_hashing(inputs[0], rehash=True)
    fresh = tmp_path / "fresh.safetensors"
    assert cli("merge", "-o", fresh, *inputs, "--rehash", "-q").returncode == 0
    assert recorded_inputs(fresh)[inputs[0].name] == sha256sum(inputs[0])
    assert cached(inputs[0]) == sha256sum(inputs[0])  # and the cache is right again


def test_rehash_and_no_hash_contradict(tmp_path, cli):
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    out = tmp_path / "m.safetensors"
    assert_clean_failure(cli("merge", "-o", out, *inputs, "--rehash", "--no-hash"), "--rehash", "--no-hash")
    assert not out.exists()


def _damage(entry: Path, how: str) -> None:
    entry.unlink()
    if how == "garbage":
        entry.write_bytes(os.urandom(100))
    elif how == "another file's digest":
        entry.write_text(f"negmerge-sha256 v1 1 2 3 4 {'0' * 64}\n")
    elif how == "wrong digest, truncated":
        entry.write_text("negmerge-sha256 v1 ")
    elif how == "huge":
        entry.write_bytes(b"negmerge-sha256 v1 " + b"9" * 10_000_000)
    elif how == "fifo":
        os.mkfifo(entry)
    elif how == "folder":
        entry.mkdir()
        (entry / "x").write_text("x")


@pytest.mark.parametrize("how", ["garbage", "another file's digest", "wrong digest, truncated", "huge", "fifo", "folder"])
def test_damaged_cache_entries_are_ignored(tmp_path, cache, how):
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    merge(inputs, tmp_path / "first.safetensors")
    entry = cache / digests.Identity.of(os.stat(inputs[0])).entry_name
    assert entry.is_file()
    _damage(entry, how)
    assert needs_hashing(inputs[0])  # a miss, never an error (and a FIFO is never opened)
    merge(inputs, tmp_path / "second.safetensors")
    assert recorded_inputs(tmp_path / "second.safetensors")[inputs[0].name] == sha256sum(inputs[0])
    if how != "folder":  # a folder where the entry goes is left alone; anything else is replaced
        assert cached(inputs[0]) == sha256sum(inputs[0])


def test_an_unusable_cache_folder_never_fails_a_merge(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(digests.ENV_VAR, str(blocker / "cache"))
    inputs = make_vectors(tmp_path / "in", 2, SHAPES)
    merge(inputs, tmp_path / "m.safetensors")
    assert recorded_inputs(tmp_path / "m.safetensors") == {p.name: sha256sum(p) for p in inputs}


def test_two_merges_at_once_share_the_cache(tmp_path, cache):
    """One merge in a subprocess, the other here, started once the first is streaming: both hash
    the same (uncached) inputs and record the same entries at about the same time."""
    inputs = make_vectors(tmp_path / "in", 4, {"w": (2000, 1000), "b": (1000,)})
    outs = [tmp_path / f"m{i}.safetensors" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.Popen([sys.executable, "-m", "negmerge_cli", "merge", "-q", "-o", str(outs[0]),
                              "--max-memory", "20MB", *map(str, inputs)], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".m0.safetensors.*.tmp")) and other.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    merge_vectors(inputs, outs[1], options=StreamOptions(device="cpu", max_memory="20MB"))
    assert other.wait(timeout=120) == 0, other.stderr.read()
    expected = {p.name: sha256sum(p) for p in inputs}
    assert all(recorded_inputs(out) == expected for out in outs)
    assert torch.equal(load_file(str(outs[0]))["w"], load_file(str(outs[1]))["w"])
    for path in [*inputs, *outs]:
        assert cached(path) == sha256sum(path)
    names = sorted(e.name for e in cache.iterdir())
    assert len(names) == len(inputs) + len(outs)  # one entry per file, no temporary file left behind
    assert not [n for n in names if n.startswith(".")]


# -- NaN/Inf: checked once per slice on the running sum, the culprit named as before -----------


def _poison(path: Path, out: Path, name: str, index: int, value: float) -> Path:
    tensors = load_file(str(path))
    tensors[name].view(-1)[index] = value
    save_file(tensors, str(out))
    return out


@pytest.mark.parametrize("method", ["negmerge", "sum", "mean"])
def test_nonfinite_input_is_named_after_the_sum_check(tmp_path, cli, method):
    inputs = make_vectors(tmp_path / "in", 4, SHAPES)
    # both the third and the fourth input are bad in the same slice: the first in order is named
    third = _poison(inputs[2], tmp_path / "third.safetensors", "w", 7, float("inf"))
    fourth = _poison(inputs[3], tmp_path / "fourth.safetensors", "w", 3, float("nan"))
    out = tmp_path / "m.safetensors"
    line = assert_clean_failure(cli("merge", "-m", method, "-o", out, *inputs[:2], third, fourth),
                                str(third), "'w'", "NaN or Inf", "--allow-nonfinite")
    assert str(fourth) not in line
    assert not out.exists()


def test_nonfinite_base_is_named(tmp_path, cli, model_files):
    base, finetuned = model_files
    bad_base = _poison(base, tmp_path / "bad_base.safetensors", "layer.weight", 5, float("-inf"))
    out = tmp_path / "m.safetensors"
    assert_clean_failure(cli("merge", "-o", out, "--base", bad_base, *finetuned), str(bad_base), "'layer.weight'")


def test_a_sum_that_overflows_is_not_an_input_error(tmp_path, cli):
    big = 3e38
    inputs = [tmp_path / f"{name}.safetensors" for name in "abc"]
    for path, values in zip(inputs, ([big, 1.0], [big, 2.0], [-1.0, 3.0])):
        save_file({"x": torch.tensor(values)}, str(path))
    # the running sum overflows where the signs disagree: dropped, so the merge is fine ...
    dropped = tmp_path / "dropped.safetensors"
    assert cli("merge", "-o", dropped, *inputs, "-q").returncode == 0
    assert load_file(str(dropped))["x"].tolist() == [0.0, 2.0]
    # ... and where they agree the overflow is kept, which the result check reports
    kept = tmp_path / "kept.safetensors"
    assert_clean_failure(cli("merge", "-o", kept, *inputs[:2]), str(kept), "'x'", "NaN or Inf")


def test_negmerge_is_bit_exact_with_nonfinite_values_allowed(tmp_path):
    generator = torch.Generator().manual_seed(3)
    taus = []
    for index in range(4):
        tau = torch.randn(5000, generator=generator)
        tau[torch.rand(5000, generator=generator) < 0.1] = 0.0
        tau[torch.rand(5000, generator=generator) < 0.05] = -0.0
        tau[torch.rand(5000, generator=generator) < 0.02] = float("inf") * (1 - 2 * (index % 2))
        tau[torch.rand(5000, generator=generator) < 0.02] = float("nan")
        tau[:50] = torch.tensor(1e-45) * (index + 1)  # denormals, all positive: kept, rounded
        taus.append(tau)
    paths = []
    for index, tau in enumerate(taus):
        paths.append(tmp_path / f"t{index}.safetensors")
        save_file({"x": tau}, str(paths[-1]))
    out = tmp_path / "m.safetensors"
    merge_vectors(paths, out, options=StreamOptions(device="cpu", allow_nonfinite=True, max_memory="200KB"))
    result = load_file(str(out))["x"]
    expected = ref.negmerge(taus)
    assert torch.equal(result.view(torch.int32), expected.view(torch.int32))  # bits, NaN and -0.0 included


def test_concurrent_writers_and_readers_of_one_entry(tmp_path, cache):
    """Entries are replaced atomically: a reader sees no entry or a whole one, never a torn one."""
    import threading

    identity = digests.Identity(1, 2, 3, 4)
    written = {hashlib.sha256(bytes([i])).hexdigest() for i in range(8)}
    seen: list[str | None] = []

    def write(digest: str) -> None:
        for _ in range(25):
            digests.record(identity, digest)

    def read() -> None:
        for _ in range(200):
            seen.append(digests.lookup(identity))

    threads = [threading.Thread(target=write, args=(d,)) for d in written] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(seen) <= written | {None} and digests.lookup(identity) in written
    assert [e.name for e in cache.iterdir()] == [identity.entry_name]  # no temporary file left


def test_a_merge_failing_while_its_inputs_are_hashed_keeps_the_old_output(tmp_path, cli):
    """Cold cache: the hasher threads run beside the stream when the last tensor fails; they stop,
    the existing output is untouched and no temporary file stays behind."""
    inputs = make_vectors(tmp_path / "in", 3, SHAPES)
    bad = _poison(inputs[2], tmp_path / "in" / "bad.safetensors", "b", 199, float("nan"))
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"the old output")
    assert_clean_failure(cli("merge", "-f", "-o", out, *inputs[:2], bad), str(bad), "'b'", "NaN or Inf")
    assert out.read_bytes() == b"the old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "in", "m.safetensors"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("negmerge-")]


@pytest.mark.parametrize("shard_size", [None, 8000])
@pytest.mark.parametrize("settled_at", [0, 1, 2])  # tensors written before the final metadata is known
def test_an_output_digest_is_sha256sum_whenever_its_metadata_settles(tmp_path, shard_size, settled_at):
    tensors = {"a": torch.arange(5000.0), "b": torch.ones(300, dtype=torch.float16)}
    layout = [OutputTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    out = tmp_path / "o.safetensors"
    with StreamingWriter(out, layout, {"k": HASH_PLACEHOLDER}, shard_size=shard_size,
                         metadata_final=False) as writer:
        for index, (name, values) in enumerate([*tensors.items(), ("", None)]):
            if index == settled_at:
                writer.settle_metadata({"k": "final"})
            if values is not None:
                writer.write(name, values[:100])
                writer.write(name, values[100:])
        writer.update_metadata({"k": "final"})
    shards = [p for p in writer.final_paths if p.suffix == ".safetensors"]
    assert len(shards) == (1 if shard_size is None else 2)
    for shard in shards:
        assert cached(shard) == sha256sum(shard)
        with open_checkpoint(shard, digest=False) as checkpoint:
            assert checkpoint.metadata["k"] == "final"
    loaded = {name: t for shard in shards for name, t in load_file(str(shard)).items()}
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[n], tensors[n]) for n in tensors)
