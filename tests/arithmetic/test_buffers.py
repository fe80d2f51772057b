"""BatchNorm running statistics in task vectors: left out by default, kept with --buffers include."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_clean_failure
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def _bn_model(seed: int) -> dict[str, torch.Tensor]:
    """A real conv + BatchNorm state dict after some training-mode forward passes (moved statistics)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 6, 6) + seed)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def checkpoints(tmp_path):
    base, tuned = _bn_model(0), _bn_model(1)
    tuned["1.num_batches_tracked"] = base["1.num_batches_tracked"] + 5
    tuned["1.weight"] = tuned["1.weight"] + 0.1  # BatchNorm's affine weights train too (its bias stays: omitted zero)
    paths = tmp_path / "base.safetensors", tmp_path / "ft.safetensors"
    save_file(base, str(paths[0]))
    save_file(tuned, str(paths[1]))
    return paths, base, tuned


def _metadata(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_vector_leaves_running_statistics_out_by_default(cli, tmp_path, checkpoints):
    (base_path, tuned_path), base, tuned = checkpoints
    out = tmp_path / "tau.safetensors"
    assert cli("vector", "--base", base_path, tuned_path, "-o", out, "-q").returncode == 0
    tau = load_file(str(out))
    assert set(tau) == {"0.weight", "0.bias", "1.weight"}  # no running_*, no integer counter
    assert json.loads(_metadata(out)["negmerge.running_statistics"]) == {"buffers": "exclude", "tensors": 2}


def test_vector_with_buffers_include_keeps_the_plain_difference(cli, tmp_path, checkpoints):
    (base_path, tuned_path), base, tuned = checkpoints
    out = tmp_path / "tau.safetensors"
    assert cli("vector", "--base", base_path, tuned_path, "-o", out, "--buffers", "include", "-q").returncode == 0
    tau = load_file(str(out))
    for name in ("1.running_mean", "1.running_var"):
        assert torch.equal(tau[name], tuned[name] - base[name])
    assert "1.num_batches_tracked" not in tau


def test_merge_from_checkpoints_follows_the_same_rule_and_apply_keeps_base_statistics(cli, tmp_path, checkpoints):
    (base_path, tuned_path), base, tuned = checkpoints
    merged, unlearned = tmp_path / "merged.safetensors", tmp_path / "unlearned.safetensors"
    assert cli("merge", "--base", base_path, tuned_path, tuned_path, "-o", merged, "-q").returncode == 0
    assert not any("running" in name for name in load_file(str(merged)))
    assert cli("apply", "--base", base_path, "--vector", merged, "--scale", "-1", "-o", unlearned, "-q").returncode == 0
    result = load_file(str(unlearned))
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(result[name], base[name])
    assert torch.allclose(result["1.weight"], 2 * base["1.weight"] - tuned["1.weight"])


def test_bad_buffers_value_fails_cleanly(tmp_path, checkpoints):
    from helpers import run_cli

    (base_path, tuned_path), _, _ = checkpoints
    out = tmp_path / "tau.safetensors"
    assert_clean_failure(run_cli("vector", "--base", base_path, tuned_path, "-o", out, "--buffers", "some"),
                         "--buffers", "'some'")
    assert not out.exists()
