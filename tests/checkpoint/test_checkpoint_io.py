"""The safetensors reader's validation and the atomic streaming writer, at the library level."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from negmerge_cli.checkpoint import (
    OutputTensor,
    StreamingWriter,
    load_state_dict,
    open_checkpoint,
    save_state_dict,
)
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError, OutputError


def raw_file(path: Path, header: dict, data: bytes, declared: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", declared if declared is not None else len(encoded)) + encoded + data)
    return path


@pytest.mark.parametrize(
    "header, data, declared, message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, None, "unexpected bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 1 << 60, "header claims"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10_000, "header claims"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "gap"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "do not match"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "data_offsets"),
        ({"__metadata__": {"x": 1}}, b"", None, "__metadata__"),
    ],
)
def test_damaged_headers_are_rejected_with_the_tensor_named(tmp_path, header, data, declared, message):
    path = raw_file(tmp_path / "bad.safetensors", header, data, declared)
    with pytest.raises(CheckpointError, match=message) as error:
        open_checkpoint(path)
    assert str(path) in str(error.value)


def test_not_json_and_tiny_files(tmp_path):
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(tmp_path / "tiny.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "text.safetensors").write_text("this is a text file, not weights at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(tmp_path / "text.safetensors")


def test_reads_what_safetensors_writes_whole_and_in_slices(tmp_path):
    tensors = {"f": torch.randn(5, 7), "h": torch.randn(9).half(), "bf": torch.randn(4).bfloat16(),
               "i": torch.arange(6), "bool": torch.tensor([True, False]), "empty": torch.empty(0, 3)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    loaded = load_state_dict(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[n], tensors[n]) for n in tensors)
    with open_checkpoint(tmp_path) as checkpoint:  # a folder with one file
        assert torch.equal(checkpoint.read("f", 3, 20), tensors["f"].flatten()[3:20])


def test_hash_is_the_files_sha256_in_any_read_order(tmp_path):
    tensors = {f"t{i}": torch.randn(100 + i) for i in range(20)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    expected = hashlib.sha256((tmp_path / "x.safetensors").read_bytes()).hexdigest()
    for order in (sorted(tensors), random.Random(0).sample(sorted(tensors), 20), ["t3"], []):
        with open_checkpoint(tmp_path / "x.safetensors") as checkpoint:
            for name in order:
                checkpoint.read(name, 10, 50)
                checkpoint.read(name)
            assert list(checkpoint.file_hashes().values()) == [expected]


def test_sharded_write_and_read_back(tmp_path):
    tensors = {f"layer{i}.weight": torch.randn(64, 64) for i in range(6)}
    save_state_dict(tensors, tmp_path / "model.safetensors", {"k": "v"}, shard_size=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors.values())
    for shard in shards:  # each shard is a valid file on its own, with the metadata
        for name, value in load_file(str(tmp_path / shard)).items():
            assert index["weight_map"][name] == shard and torch.equal(value, tensors[name])
    for source in (tmp_path / "model.safetensors.index.json", tmp_path):
        loaded = load_state_dict(source)
        assert all(torch.equal(loaded[n], tensors[n]) for n in tensors)


def test_index_pointing_at_a_missing_shard(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(CheckpointError, match="s2.safetensors: no such file"):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"precious")
    layout = [OutputTensor("a", torch.float32, (1000,)), OutputTensor("b", torch.float32, (10,))]
    with pytest.raises(KeyboardInterrupt):
        with StreamingWriter(target, layout, {"format": "pt"}, force=True) as writer:
            writer.write("a", torch.ones(500))
            raise KeyboardInterrupt
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_writer_refuses_existing_output_and_inputs(tmp_path):
    existing = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(1)}, str(existing))
    layout = [OutputTensor("a", torch.float32, (1,))]
    with pytest.raises(OutputError, match="exists; pass force=True"):
        StreamingWriter(existing, layout, {})
    with files.operation():  # a file read in an operation is protected from its outputs
        open_checkpoint(existing).close()
        with pytest.raises(OutputError, match="also an input"):
            StreamingWriter(existing, layout, {}, force=True)
        link = tmp_path / "link.safetensors"
        link.symlink_to(existing)
        with pytest.raises(OutputError, match="also an input"):
            StreamingWriter(link, layout, {}, force=True)
    StreamingWriter(existing, layout, {}, force=True)  # outside that operation it is a plain output


def test_empty_tensors_anywhere_in_the_layout(tmp_path):
    tensors = {"a_empty": torch.empty(0, 3), "b": torch.arange(4.0), "c_empty": torch.empty(0), "d": torch.ones(2)}
    layout = [OutputTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with StreamingWriter(tmp_path / "e.safetensors", layout, {}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    loaded = load_file(str(tmp_path / "e.safetensors"))
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())


def test_metadata_written_at_the_end_and_format_kept(tmp_path):
    layout = [OutputTensor("a", torch.float32, (3,))]
    with StreamingWriter(tmp_path / "m.safetensors", layout, {"format": "pt", "hash": "0" * 64}) as writer:
        writer.write("a", torch.arange(3.0))
        writer.update_metadata({"hash": "f" * 64, "late": "added"})
    with open_checkpoint(tmp_path / "m.safetensors") as checkpoint:
        assert checkpoint.metadata == {"format": "pt", "hash": "f" * 64, "late": "added"}
    assert torch.equal(load_file(str(tmp_path / "m.safetensors"))["a"], torch.arange(3.0))
