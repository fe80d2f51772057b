"""The vector / merge / apply / inspect commands end to end, through the real CLI in a subprocess."""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import dense_reference as ref
import pytest
import torch
from helpers import assert_clean_failure, make_vectors, run_cli
from safetensors.torch import load_file, save_file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("negmerge ")
    helptext = run_cli("--help").stdout
    for command in ("vector", "merge", "apply", "inspect"):
        assert command in helptext


def test_pipeline_vector_merge_apply_inspect(model_files, tmp_path):
    base, finetuned = model_files
    vectors = tmp_path / "vectors"
    result = run_cli("vector", "--base", base, "--out-dir", vectors, *finetuned, "--quiet")
    assert result.returncode == 0, result.stderr
    taus = [load_file(str(vectors / f.name)) for f in finetuned]
    assert "position_ids" not in taus[0]  # integer buffers are not part of a vector
    for tau, path in zip(taus, finetuned):
        ft, b = load_file(str(path)), load_file(str(base))
        assert torch.equal(tau["layer.weight"], ft["layer.weight"] - b["layer.weight"])

    merged = tmp_path / "merged.safetensors"
    assert run_cli("merge", "-m", "negmerge", "-o", merged, *sorted(vectors.iterdir())).returncode == 0
    expected = ref.negmerge([t["layer.weight"] for t in taus])
    assert torch.equal(load_file(str(merged))["layer.weight"], expected)

    # the same merge with vectors formed on the fly from the fine-tuned checkpoints
    on_the_fly = tmp_path / "on_the_fly.safetensors"
    assert run_cli("merge", "--base", base, "-o", on_the_fly, *finetuned, "-q").returncode == 0
    a, b = load_file(str(merged)), load_file(str(on_the_fly))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)

    unlearned = tmp_path / "unlearned.safetensors"
    assert run_cli("apply", "--base", base, "--vector", merged, "--scale", "-0.9", "-o", unlearned).returncode == 0
    theta, base_tensors = load_file(str(unlearned)), load_file(str(base))
    assert torch.equal(theta["position_ids"], base_tensors["position_ids"])
    assert torch.equal(theta["layer.weight"], base_tensors["layer.weight"] + (-0.9) * a["layer.weight"])

    meta = json.loads(run_cli("inspect", "--json", merged).stdout)
    assert meta["is_task_vector"] and meta["metadata"]["negmerge.method"] == "negmerge"
    assert meta["metadata"]["format"] == "pt"
    inputs = json.loads(meta["metadata"]["negmerge.inputs"])
    assert [i["input"] for i in inputs] == [str(p) for p in sorted(vectors.iterdir())]
    assert [f["sha256"] for i in inputs for f in i["files"]] == [sha256(p) for p in sorted(vectors.iterdir())]
    fast = tmp_path / "fast.safetensors"
    assert run_cli("merge", "--no-hash", "-o", fast, *sorted(vectors.iterdir()), "-q").returncode == 0
    fast_meta = json.loads(run_cli("inspect", "--json", fast).stdout)["metadata"]
    assert {f["sha256"] for i in json.loads(fast_meta["negmerge.inputs"]) for f in i["files"]} == {"skipped"}
    assert load_file(str(fast))["layer.weight"].equal(a["layer.weight"])
    nonzero = (a["layer.weight"] != 0).sum() + (a["layer.bias"] != 0).sum() + (a["norm.weight"] != 0).sum()
    assert meta["nonzero_fraction"] == pytest.approx(float(nonzero) / (40 * 30 + 40 + 30))
    table = run_cli("inspect", unlearned).stdout
    assert "layer.weight" in table and "negmerge.scale" in table


def test_vector_then_apply_gives_back_the_finetuned_weights(model_files, tmp_path, cli):
    base, finetuned = model_files
    tau = tmp_path / "tau.safetensors"
    back = tmp_path / "back.safetensors"
    assert cli("vector", "--base", base, "-o", tau, finetuned[0], "-q").returncode == 0
    assert cli("apply", "--base", base, "--vector", tau, "--scale", "1", "-o", back, "-q").returncode == 0
    original, restored = load_file(str(finetuned[0])), load_file(str(back))
    for name in original:
        torch.testing.assert_close(restored[name], original[name], rtol=0, atol=1e-6)


def test_half_precision_round_trip_is_exact_with_float32_vectors(tmp_path, cli):
    generator = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(50, 50, generator=generator).half()}
    ft = {"w": (base["w"].float() + 0.01 * torch.randn(50, 50, generator=generator)).half()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(ft, str(tmp_path / "ft.safetensors"))
    assert cli("vector", "-b", tmp_path / "base.safetensors", "-o", tmp_path / "tau.safetensors",
               "--dtype", "float32", tmp_path / "ft.safetensors", "-q").returncode == 0
    assert cli("apply", "-b", tmp_path / "base.safetensors", "-v", tmp_path / "tau.safetensors", "-s", "1",
               "-o", tmp_path / "back.safetensors", "-q").returncode == 0
    back = load_file(str(tmp_path / "back.safetensors"))["w"]
    assert back.dtype == torch.float16 and torch.equal(back, ft["w"])


def test_sharded_output_and_sharded_input(vectors, tmp_path, cli):
    out = tmp_path / "out" / "merged.safetensors"
    result = cli("merge", "-m", "mean", "-o", out, "--shard-size", "10KB", *vectors, "-q")
    assert result.returncode == 0, result.stderr
    index = tmp_path / "out" / "merged.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    assert len(set(weight_map.values())) >= 2
    # a sharded checkpoint is a valid input, by index or by folder
    for source in (index, tmp_path / "out"):
        copy = tmp_path / f"copy-{source.name}.safetensors"
        assert cli("merge", "-m", "sum", "-o", copy, source, "-q").returncode == 0
        dense = load_file(str(copy))
        expected = ref.mean([load_file(str(v))["w"] for v in vectors])
        torch.testing.assert_close(dense["w"], expected, rtol=1e-6, atol=1e-6)


def test_missing_tensor_fails_unless_missing_as_zero(tmp_path, cli):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.ones(4), "y": torch.ones(2)}, str(a))
    save_file({"x": torch.ones(4) * 3}, str(b))
    out = tmp_path / "m.safetensors"
    assert_clean_failure(cli("merge", "-m", "mean", "-o", out, a, b), str(b), "'y'", "--missing-as-zero")
    assert not out.exists()
    assert cli("merge", "-m", "mean", "-o", out, a, b, "--missing-as-zero", "-q").returncode == 0
    merged = load_file(str(out))
    assert merged["x"].tolist() == [2.0] * 4 and merged["y"].tolist() == [0.5, 0.5]


def test_nonfinite_inputs_fail_unless_allowed(vectors, tmp_path, cli):
    poisoned = tmp_path / "poisoned.safetensors"
    tensors = load_file(str(vectors[0]))
    tensors["b"][3] = float("nan")
    save_file(tensors, str(poisoned))
    out = tmp_path / "m.safetensors"
    assert_clean_failure(cli("merge", "-o", out, poisoned, *vectors[1:]), str(poisoned), "'b'", "NaN")
    assert not out.exists()
    assert cli("merge", "-o", out, poisoned, *vectors[1:], "--allow-nonfinite", "-q").returncode == 0


def _hostile_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment the error must contain)."""
    folder.mkdir()
    data = good.read_bytes()
    text = folder / "notes.safetensors"
    text.write_text("just some text, definitely not tensors\n" * 3)
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[:-100])
    huge = folder / "huge.safetensors"
    huge.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    header["b"]["data_offsets"] = [header["b"]["data_offsets"][0] + 4, header["b"]["data_offsets"][1] + 4]
    encoded = json.dumps(header).encode()
    offsets = folder / "offsets.safetensors"
    offsets.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + header_length:])
    return {
        "missing": (folder / "nope.safetensors", "no such file"),
        "text": (text, "not a safetensors file"),
        "truncated": (truncated, "truncated"),
        "huge-header": (huge, "header claims"),
        "offsets": (offsets, "inconsistent offsets"),
    }


@pytest.mark.parametrize("command", ["merge", "vector", "apply"])
def test_hostile_inputs_fail_cleanly_without_output(vectors, tmp_path, command, cli):
    out = tmp_path / "out.safetensors"
    for label, (bad, fragment) in _hostile_files(tmp_path / "bad", vectors[0]).items():
        run = run_cli if command == "merge" and label == "truncated" else cli  # one real subprocess
        if command == "merge":
            args = ["merge", "-o", out, vectors[1], bad]
        elif command == "vector":
            args = ["vector", "--base", vectors[1], "-o", out, bad]
        else:
            args = ["apply", "--base", vectors[1], "--vector", bad, "--scale", "-1", "-o", out]
        assert_clean_failure(run(*args), str(bad), fragment)
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [], label


def test_inconsistent_inputs_fail_cleanly(tmp_path, vectors, cli):
    out = tmp_path / "out.safetensors"
    other_shape = tmp_path / "other_shape.safetensors"
    save_file({"w": torch.zeros(70, 60), "b": torch.zeros(70), "scalar": torch.zeros(()), "empty": torch.zeros(0, 4)},
              str(other_shape))
    assert_clean_failure(cli("merge", "-o", out, vectors[0], other_shape), str(other_shape), "'w'", "shape")

    integer = tmp_path / "integer.safetensors"
    save_file({"w": torch.zeros(60, 70, dtype=torch.int32), "b": torch.zeros(70), "scalar": torch.zeros(()),
               "empty": torch.zeros(0, 4)}, str(integer))
    assert_clean_failure(cli("merge", "-o", out, vectors[0], integer), str(integer), "'w'", "I32")
    assert_clean_failure(cli("apply", "-b", vectors[0], "-v", integer, "-s", "1", "-o", out), str(integer), "'w'")
    assert not out.exists()


def test_bad_options_fail_cleanly(vectors, tmp_path, cli):
    out = tmp_path / "out.safetensors"
    cases = [
        (["merge", "-m", "bogus", "-o", out, *vectors], ["--method bogus", "negmerge"]),
        (["merge", "-m", "ties", "--density", "0", "-o", out, *vectors], ["--density"]),
        (["merge", "-m", "ties", "--density", "1.01", "-o", out, *vectors], ["--density"]),
        (["merge", "-m", "dare", "--drop-rate", "1", "-o", out, *vectors], ["--drop-rate"]),
        (["merge", "-m", "negmerge", "--density", "0.5", "-o", out, *vectors], ["--density"]),
        (["merge", "-m", "mean", "-w", "1", "-o", out, *vectors], ["--weight", "5 inputs"]),
        (["merge", "-m", "negmerge", "-w", "1", "-w", "1", "-w", "1", "-w", "1", "-w", "1", "-o", out, *vectors],
         ["--weight"]),
        (["merge", "--max-memory", "lots", "-o", out, *vectors], ["--max-memory"]),
        (["merge", "--dtype", "int8", "-o", out, *vectors], ["--dtype"]),
        (["merge", "--device", "tpu", "-o", out, *vectors], ["--device"]),
        (["merge", "--shard-size", "big", "-o", out, *vectors], ["--shard-size"]),
        (["inspect", tmp_path / "missing.safetensors"], ["missing.safetensors", "no such file"]),
        (["inspect", "--json", vectors[0].parent], ["expected one safetensors file"]),
        (["merge", "-o", vectors[2], "--force", *vectors], [str(vectors[2]), "also an input"]),
        (["merge", "-o", f"{vectors[0]}/", *vectors], [str(vectors[0]), "not a folder"]),
        (["merge", "--no-such-option", "-o", out, *vectors], ["--no-such-option"]),
        (["apply", "-b", vectors[0], "-v", vectors[1], "-s", "nan", "-o", out], ["--scale"]),
        (["vector", "-b", vectors[0], vectors[1], vectors[2]], ["--out-dir"]),
    ]
    before = {p: sha256(p) for p in vectors}
    for args, fragments in cases:
        assert_clean_failure(cli(*args), *fragments)
        assert not out.exists(), args
    assert before == {p: sha256(p) for p in vectors}  # inputs untouched


def test_existing_output_needs_force(vectors, tmp_path, cli):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    assert_clean_failure(cli("merge", "-o", out, *vectors), str(out), "--force")
    assert out.read_bytes() == b"keep me"
    assert cli("merge", "-o", out, *vectors, "--force", "-q").returncode == 0
    assert "w" in load_file(str(out))


def test_file_size_limit_mid_write_leaves_nothing(vectors, tmp_path):
    """A write that fails half-way (here: RLIMIT_FSIZE, as a full disk would) leaves no file."""
    out = tmp_path / "out.safetensors"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    result = run_cli("merge", "-o", out, *vectors, "-q", preexec_fn=limit)
    assert_clean_failure(result, str(out), "file too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors"]


@pytest.fixture
def small_filesystem(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_fails_cleanly(vectors, small_filesystem):
    out = small_filesystem / "out.safetensors"
    (small_filesystem / "filler").write_bytes(b"\0" * 56_000)  # leaves < one output
    result = run_cli("merge", "-o", out, *vectors, "-q")
    assert_clean_failure(result, str(out), "disk space")
    assert sorted(p.name for p in small_filesystem.iterdir()) == ["filler"]


def test_ctrl_c_mid_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    inputs = make_vectors(tmp_path / "big", 3, {f"t{i}": (1024, 1024) for i in range(16)}, seed=3)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old result")
    process = subprocess.Popen(
        [sys.executable, "-m", "negmerge_cli", "merge", "-o", str(out), "--force", "--max-memory", "2MB", *map(str, inputs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.safetensors.*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    assert list(tmp_path.glob(".out.safetensors.*.tmp")), "the merge never started writing"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert out.read_bytes() == b"old result"
    assert not list(tmp_path.glob(".*.tmp"))
