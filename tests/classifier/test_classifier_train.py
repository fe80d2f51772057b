"""finetune for the classifier family: original / retrain / forget-set sweeps of the
tiny resnet8-cifar on digits through the real CLI, resume and --point, the unlearning objectives,
and bad inputs (one line, nothing created)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

from negmerge_cli.checkpoint.opening import open_checkpoint
from negmerge_cli.classifier.data import open_classifier_data
from negmerge_cli.classifier.models import create_classifier, load_classifier
from negmerge_cli.classifier.split import make_forget_split
from negmerge_cli.classifier.train import ClassifierSettings, learning_rate, mean_loss, train_classifier

# one thread: the tiny model's steps take milliseconds, and two OpenMP threads on a shared 2-core
# machine spin-wait for each other (seconds per step)
torch.set_num_threads(1)

FAST = ["--model", "resnet8-cifar", "--data", "digits", "--batch-size", "64", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "forget.json"
    make_forget_split(open_classifier_data("digits"), fraction=0.1, seed=0).save(path)
    return path


@pytest.mark.slow
def test_original_retrain_and_forget_sweep_through_the_cli(cli, tmp_path, split_file, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    original = tmp_path / "original"
    result = run_cli("finetune", *FAST, "--steps", "3", "--lr", "0.05", "-o", original)
    assert result.returncode == 0, result.stderr
    (trained,) = [p for p in original.glob("*.safetensors") if p.name != "base.safetensors"]
    with open_checkpoint(trained) as checkpoint:
        meta = checkpoint.metadata
    assert (meta["negmerge.family"], meta["negmerge.model"], meta["negmerge.num_classes"]) == ("classifier", "resnet8-cifar", "10")
    assert json.loads((original / "sweep.json").read_text())["identity"]["subset"] == "all"

    retrain = cli("finetune", *FAST, "--steps", "2", "--subset", "retain", "--forget-split", split_file,
                      "-o", tmp_path / "retrain")
    assert retrain.returncode == 0, retrain.stderr
    identity = json.loads((tmp_path / "retrain" / "sweep.json").read_text())["identity"]
    assert identity["subset"] == "retain" and len(identity["forget_split"]) == 64

    # NegMerge's fine-tunes on Df from the original: a 2-point grid over label smoothing, one point per job
    forget = tmp_path / "forget"
    common = [*FAST, "--steps", "2", "--lr", "0.01", "--label-smoothing", "0,0.1", "--subset", "forget",
              "--forget-split", split_file, "--pretrained", trained, "-o", forget]
    first = run_cli("finetune", *common, "--point", "1")
    assert first.returncode == 0, first.stderr
    records = json.loads((forget / "manifest.json").read_text())["points"]
    assert [r["name"] for r in records] == ["lr0.01_st2_wd0.0005_ls0.1_seed0_noaug"]
    rest = run_cli("finetune", *common[:-2], "-o", forget)  # resume: point 1 is skipped, point 0 trains
    assert rest.returncode == 0, rest.stderr
    manifest = json.loads((forget / "manifest.json").read_text())
    assert sorted(r["status"] for r in manifest["points"]) == ["done", "done"]
    base = load_classifier("resnet8-cifar", 10, forget / "base.safetensors")
    assert torch.equal(base.state_dict()["fc.weight"], load_classifier("resnet8-cifar", 10, trained).state_dict()["fc.weight"])
    other = cli("finetune", *common[:-2], "--objective", "ascent", "-o", forget)
    assert other.returncode != 0 and str(forget) in other.stderr and "objective" in other.stderr


def _forget_loss_after(objective: str, data, split, start) -> float:
    model = create_classifier("resnet8-cifar", 10)
    model.load_state_dict(start)
    settings = ClassifierSettings(lr=0.01, wd=0.0, label_smoothing=0.0, seed=1, epochs=None, steps=4, batch_size=64,
                                  objective=objective)
    train_classifier(model, data.train_eval_view(), split.forget_indices, settings, "cpu")
    return mean_loss(model, data.train_eval_view(), split.forget_indices)


def test_objectives_move_the_forget_loss_the_right_way():
    data = open_classifier_data("digits")
    split = make_forget_split(data, fraction=0.1, seed=0)
    torch.manual_seed(0)
    model = create_classifier("resnet8-cifar", 10)
    warm = ClassifierSettings(lr=0.05, wd=0.0, label_smoothing=0.0, seed=0, epochs=None, steps=15, batch_size=64)
    train_classifier(model, data.train, range(len(data.train)), warm, "cpu")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = mean_loss(model, data.train_eval_view(), split.forget_indices)
    assert _forget_loss_after("ce", data, split, start) < before
    assert _forget_loss_after("ascent", data, split, start) > before
    assert _forget_loss_after("wrong-labels", data, split, start) > before


def test_schedules():
    cosine = ClassifierSettings(lr=0.1, wd=0, label_smoothing=0, seed=0, epochs=None, steps=100, batch_size=1)
    assert learning_rate(0, 100, cosine) == pytest.approx(0.1) and learning_rate(50, 100, cosine) == pytest.approx(0.05)
    step = ClassifierSettings(**{**cosine.__dict__, "schedule": "step"})
    assert [learning_rate(s, 100, step) for s in (49, 50, 75)] == pytest.approx([0.1, 0.01, 0.001])


@pytest.mark.parametrize("extra, fragments", [
    (["--subset", "retain"], ["--subset retain needs --forget-split"]),
    (["--subset", "everything"], ["--subset", "all, retain, forget"]),
    (["--objective", "forget-harder"], ["--objective", "ce, ascent, wrong-labels, random-labels, salun, l1-sparse"]),
    (["--num-classes", "7"], ["--num-classes 7", "10 classes"]),
    (["--model", "resnet-nope"], ["--model", "unknown model"]),
    (["--augment", "sideways"], ["--augment", "crop-flip, crop, none"]),
    (["--randaug", "1,1"], ["--randaug is for CLIP models", "--augment"]),
    (["--model", "negmerge-tiny", "--augment", "none"], ["--augment is for classifier models"]),
    # options only the CLIP family can honour are refused for a classifier, never ignored
    (["--precision", "bf16"], ["--precision is for CLIP models", "resnet8-cifar"]),
    (["--accum-steps", "2"], ["--accum-steps is for CLIP models"]),
    (["--crop-scale", "0.5"], ["--crop-scale is for CLIP models"]),
    (["--hflip", "0"], ["--hflip is for CLIP models"]),
    (["--quick-gelu"], ["--quick-gelu is for CLIP models"]),
    (["--randaug-interpolation", "bicubic"], ["--randaug-interpolation is for CLIP models"]),
    (["--freeze", "fc.*"], ["--freeze is for CLIP models", "classifiers train every parameter"]),
    (["--model", "negmerge-tiny", "--optimizer", "sgd"], ["--optimizer sgd", "adamw"]),
])
def test_finetune_bad_inputs_create_nothing(cli, tmp_path, extra, fragments):
    target = tmp_path / "sweep"
    result = cli("finetune", *FAST, "--steps", "1", *extra, "-o", target)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and not target.exists(), result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and all(f in lines[0] for f in fragments), result.stderr


def test_finetune_refuses_a_split_for_another_dataset_and_wrong_pretrained(cli, tmp_path):
    from classifier_helpers import make_cifar10_python

    make_cifar10_python(tmp_path / "c10")
    make_forget_split(open_classifier_data(f"cifar10:{tmp_path / 'c10'}"), fraction=0.5).save(tmp_path / "c10.json")
    result = cli("finetune", *FAST, "--steps", "1", "--subset", "forget", "--forget-split", tmp_path / "c10.json",
                 "-o", tmp_path / "a")
    assert result.returncode != 0 and "made for another dataset" in result.stderr and not (tmp_path / "a").exists()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in create_classifier("resnet8-cifar", 100).state_dict().items()},
              tmp_path / "c100.safetensors")
    result = cli("finetune", *FAST, "--steps", "1", "--pretrained", tmp_path / "c100.safetensors", "-o", tmp_path / "b")
    assert result.returncode != 0 and "fc.weight has 100 rows; --num-classes is 10" in result.stderr
    assert not (tmp_path / "b").exists()


def test_augment_choice_is_recorded_and_changes_the_training(cli, tmp_path):
    """--augment none trains on the plain images, crop on pad-4 crops: different weights from the
    same seed; the choice is part of the sweep's identity (a resume with another is refused)."""
    trained = {}
    for choice in ("none", "crop"):
        target = tmp_path / choice
        result = cli("finetune", *FAST, "--steps", "2", "--augment", choice, "-o", target)
        assert result.returncode == 0, result.stderr
        assert json.loads((target / "sweep.json").read_text())["identity"]["augmentation"] == choice
        (path,) = [p for p in target.glob("*.safetensors") if p.name != "base.safetensors"]
        with open_checkpoint(path) as checkpoint:
            trained[choice] = checkpoint.read_tensor("conv1.weight")
    assert not torch.equal(trained["none"], trained["crop"])
    assert cli("finetune", *FAST, "--steps", "1", "-o", tmp_path / "d").returncode == 0
    assert json.loads((tmp_path / "d" / "sweep.json").read_text())["identity"]["augmentation"] == "crop"  # digits
    refused = cli("finetune", *FAST, "--steps", "2", "--augment", "crop", "-o", tmp_path / "none")
    assert refused.returncode != 0 and "augmentation" in refused.stderr, refused.stderr
