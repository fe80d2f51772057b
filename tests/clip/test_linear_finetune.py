"""``finetune --finetuning-mode linear``: the points train the linearization of the image encoder
around the sweep's base, record the mode and the expansion point (name and SHA-256), are validated
with the linearized forward, keep --freeze'd tensors at the base, and the mode is part of what the
sweep is."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import assert_clean_failure
from safetensors import safe_open

pytestmark = pytest.mark.slow

TINY = "negmerge-tiny"
COMMON = ["finetune", "-m", TINY, "-d", "digits", "--steps", "3", "-b", "32", "-j", "0", "--lr", "1e-3", "-q"]
POINT = "lr0.001_st3_wd0.1_ls0_seed0_noaug.safetensors"
FROZEN = "visual.conv1.weight"


@pytest.fixture(scope="module")
def linear_sweep(tmp_path_factory):
    from negmerge_cli.cli.app import main

    out = tmp_path_factory.mktemp("linear") / "sweep"
    with pytest.raises(SystemExit) as exit:
        main([*COMMON, "--finetuning-mode", "linear", "--freeze", FROZEN, "-o", str(out)])
    assert exit.value.code in (0, None)
    return out


def _read(path):
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def test_linear_points_record_the_mode_and_the_expansion_point(linear_sweep):
    tensors, metadata = _read(linear_sweep / POINT)
    base, _ = _read(linear_sweep / "base.safetensors")
    assert metadata["negmerge.finetuning_mode"] == "linear"
    assert metadata["negmerge.linearized_around"] == "base.safetensors"
    assert metadata["negmerge.linearized_around_sha256"] == hashlib.sha256(
        (linear_sweep / "base.safetensors").read_bytes()).hexdigest()
    assert json.loads((linear_sweep / "sweep.json").read_text())["identity"]["finetuning_mode"] == "linear"
    assert torch.equal(tensors[FROZEN], base[FROZEN])  # frozen: tangent zero, never moved
    changed = [k for k in tensors if k.startswith("visual.") and not torch.equal(tensors[k], base[k])]
    assert changed and not [k for k in tensors if not k.startswith("visual.") and not torch.equal(tensors[k], base[k])]


def test_val_accuracy_is_the_linearized_models(linear_sweep):
    """The recorded Val acc1 is that of f_lin(theta) around the base, not of the plain model at theta."""
    from negmerge_cli.clip import datasets, models
    from negmerge_cli.clip.evaluate import ImageCache, evaluate_cached
    from negmerge_cli.clip.linearize import LinearizedEncoder
    from negmerge_cli.clip.zeroshot import build_head

    record = json.loads((linear_sweep / "manifest.json").read_text())["points"][0]
    model = models.create_model(TINY, str(linear_sweep / POINT))
    base = models.create_model(TINY, str(linear_sweep / "base.safetensors"))
    val = datasets.load_dataset("digits:val", "val")
    cache = ImageCache.build(val, models.transforms_for(model, train=False), 1 << 28)
    head = build_head(base, models.tokenizer_for(TINY), val.classnames, val.templates)
    linear = evaluate_cached(model, cache, head, 256, encode=LinearizedEncoder(model.visual, base.visual.state_dict()))
    plain = evaluate_cached(model, cache, head, 256)
    assert record["val"]["acc1"] == pytest.approx(linear.acc1, abs=1e-9)
    assert linear.acc1 != plain.acc1 or linear.acc5 != plain.acc5  # the two forwards really differ here


def test_the_mode_is_part_of_the_sweep_and_classifiers_refuse_it(linear_sweep, cli, tmp_path):
    assert_clean_failure(cli(*COMMON, "--freeze", FROZEN, "-o", linear_sweep), str(linear_sweep), "different sweep",
                         "finetuning_mode")
    assert_clean_failure(cli(*COMMON, "--finetuning-mode", "tangent", "-o", tmp_path / "a"), "--finetuning-mode",
                         "standard or linear")
    assert_clean_failure(cli("finetune", "-m", "resnet8-cifar", "-d", "digits", "--steps", "1", "--finetuning-mode",
                             "linear", "-o", tmp_path / "b"), "--finetuning-mode is for CLIP models")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_eval_of_a_linear_checkpoint_is_linearized_around_its_recorded_base(linear_sweep, cli, tmp_path):
    import shutil

    record = json.loads((linear_sweep / "manifest.json").read_text())["points"][0]
    common = ["eval", "-m", TINY, "-d", "digits:val", "-j", "0", "-q"]
    found = cli(*common, "-c", linear_sweep / POINT)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["metrics"]["acc1"] == pytest.approx(record["val"]["acc1"], abs=1e-9)
    # moved away from its base: one line with what to do; another base: refused by its SHA-256
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(linear_sweep / POINT, alone / POINT)
    assert_clean_failure(cli(*common, "-c", alone / POINT), str(alone / POINT), "--linearized-around")
    other = tmp_path / "other.safetensors"
    from negmerge_cli.clip import models

    models.save_checkpoint(models.create_model(TINY), other, {"format": "pt"})
    assert_clean_failure(cli(*common, "-c", linear_sweep / POINT, "--linearized-around", other), str(other),
                         "not the expansion point")
    given = cli(*common, "-c", alone / POINT, "--linearized-around", linear_sweep / "base.safetensors")
    assert given.returncode == 0 and json.loads(given.stdout)[0]["metrics"] == json.loads(found.stdout)[0]["metrics"]


def test_the_one_pass_search_equals_apply_then_eval_at_every_lambda(linear_sweep, cli, tmp_path):
    base, tau = linear_sweep / "base.safetensors", tmp_path / "tau.safetensors"
    assert cli("vector", "-b", base, "-o", tau, linear_sweep / POINT, "-q").returncode == 0
    coefs = [0.0, 0.5, 1.5]
    search = cli("eval", "-m", TINY, "-c", base, "--vector", tau, "--linearize", "--forget", "digits:val",
                 "--retain", "digits:test", "--coefs", ",".join(map(str, coefs)), "--threshold", "0.01",
                 "--json", tmp_path / "search.json", "-j", "0", "-q")
    assert search.returncode == 0, search.stderr
    result = json.loads((tmp_path / "search.json").read_text())
    assert result["linearized"] is True and result["forward_passes"] == 2
    assert result["linearized_around"]["file"] == "base.safetensors"
    for point in result["points"]:
        applied = tmp_path / f"theta-{point['coef']}.safetensors"
        assert cli("apply", "-b", base, "-v", tau, "-s", -point["coef"], "-o", applied, "-q").returncode == 0
        for split, key in (("digits:val", "forget_acc1"), ("digits:test", "retain_acc1")):
            found = cli("eval", "-m", TINY, "-c", applied, "-d", split, "--linearize", "--linearized-around", base,
                        "-j", "0", "-q")
            assert found.returncode == 0, found.stderr
            assert json.loads(found.stdout)[0]["metrics"]["acc1"] == pytest.approx(point[key], abs=1e-9), point


def test_mode_and_expansion_point_travel_through_merge_and_apply(linear_sweep, cli, tmp_path):
    """merge --base of linear checkpoints makes a linear vector (its search is linearized with no
    flag), apply makes a linear checkpoint; mixing modes, or a base that is not theta0, is refused."""
    from safetensors.torch import save_file

    base, point = linear_sweep / "base.safetensors", linear_sweep / POINT
    tensors, metadata = _read(point)
    standard = tmp_path / "standard.safetensors"
    save_file(tensors, str(standard), {k: v for k, v in metadata.items() if "linear" not in k and "mode" not in k})
    merged = tmp_path / "merged.safetensors"
    result = cli("merge", "-m", "negmerge", "-b", base, "-o", merged, point, point, "-q")
    assert result.returncode == 0, result.stderr
    _, merged_metadata = _read(merged)
    assert merged_metadata["negmerge.finetuning_mode"] == "linear"
    assert merged_metadata["negmerge.linearized_around_sha256"] == metadata["negmerge.linearized_around_sha256"]
    assert_clean_failure(cli("merge", "-m", "negmerge", "-b", base, "-o", tmp_path / "mixed.safetensors", point,
                             standard), str(standard), "standard", "one mode")
    other_base = tmp_path / "other-base.safetensors"
    save_file(_read(base)[0], str(other_base), {"format": "pt"})
    assert_clean_failure(cli("merge", "-m", "negmerge", "-b", other_base, "-o", tmp_path / "wrong.safetensors", point,
                             point), str(other_base), "not the expansion point")
    search = cli("eval", "-m", TINY, "-c", base, "--vector", merged, "--forget", "digits:val", "--retain",
                 "digits:test", "--coefs", "0,1", "--threshold", "0.01", "--json", tmp_path / "s.json", "-j", "0", "-q")
    assert search.returncode == 0, search.stderr
    assert json.loads((tmp_path / "s.json").read_text())["linearized"] is True  # from the vector, no flag
    unlearned = tmp_path / "unlearned.safetensors"
    assert cli("apply", "-b", base, "-v", merged, "-s", "-1", "-o", unlearned, "-q").returncode == 0
    assert _read(unlearned)[1]["negmerge.finetuning_mode"] == "linear"
    assert_clean_failure(cli("apply", "-b", other_base, "-v", merged, "-s", "-1", "-o", tmp_path / "u2.safetensors"),
                         "not the expansion point")
    assert not any((tmp_path / n).exists() for n in ("mixed.safetensors", "wrong.safetensors", "u2.safetensors"))
