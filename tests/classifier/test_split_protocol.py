"""`negmerge split --protocol salun`: SalUn's split (OPTML-Group/Unlearn-Saliency, Classification/
dataset.py), checked index for index against the protocol's draw written here from numpy's
RandomState; the hold-out kept out of every training subset and evaluated as Dval; refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # see test_classifier_train.py

from classifier_helpers import make_cifar10_python, make_tinyimagenet

from negmerge_cli.classifier.data import open_classifier_data
from negmerge_cli.classifier.split import ForgetSplit, load_forget_split, make_forget_split
from negmerge_cli.core.errors import NegmergeError, UsageError
from helpers import assert_clean_failure


def _labels_only(name: str, labels: np.ndarray, num_classes: int):
    """What make_forget_split reads of a dataset: its name, train labels and identity (no images)."""
    identity = {"dataset": name, "root": None, "n_train": len(labels), "n_test": 10_000, "num_classes": num_classes,
                "train_labels_sha256": "0" * 64}
    return SimpleNamespace(name=name, train_labels=labels, num_classes=num_classes, identity=identity,
                           imagefolder_order=None)


def _real_structure(num_classes: int, per_class: int) -> np.ndarray:
    """CIFAR's training-label structure (per_class of each class) in a fixed shuffled arrangement."""
    return np.random.default_rng(7).permutation(np.repeat(np.arange(num_classes), per_class))


def _protocol_draw(targets: np.ndarray, count: int, seed: int, val_share: float = 0.1):
    """SalUn's dataset.py, step by step: per class in label order, RandomState(seed).choice of
    int(0.1 * n) -> validation; train_idx = list(set(range(n)) - set(valid_idx)); then replace_class(-1,
    num_indexes_to_replace=count, seed=seed - 1): RandomState(seed - 1).choice over the train positions."""
    rng = np.random.RandomState(seed)
    valid_idx = []
    for i in range(max(targets) + 1):
        class_idx = np.where(targets == i)[0]
        valid_idx.append(rng.choice(class_idx, int(val_share * len(class_idx)), replace=False))
    valid_idx = np.hstack(valid_idx)
    train_idx = list(set(range(len(targets))) - set(valid_idx))
    train_targets = targets[train_idx]
    indexes = np.flatnonzero(np.ones_like(train_targets))
    marked = np.random.RandomState(seed - 1).choice(indexes, size=count, replace=False)
    return sorted(int(i) for i in valid_idx), sorted(int(train_idx[p]) for p in marked)


@pytest.mark.parametrize("name, num_classes, per_class, seed", [
    ("cifar10", 10, 5000, None), ("cifar10", 10, 5000, 5), ("cifar100", 100, 500, None)])
def test_salun_split_equals_the_protocols_draw_on_the_real_label_structure(name, num_classes, per_class, seed):
    labels = _real_structure(num_classes, per_class)
    split = make_forget_split(_labels_only(name, labels, num_classes), fraction=0.1, seed=seed, protocol="salun")
    val, forget = _protocol_draw(labels, 4500, 2 if seed is None else seed)
    assert list(split.val_indices) == val and list(split.forget_indices) == forget
    assert split.seed == (2 if seed is None else seed) and split.unused_indices == ()
    assert split.counts == {"forget": 4500, "retain": 40_500, "train": 50_000, "val": 5000, "unused": 0}
    assert np.bincount(labels[val], minlength=num_classes).tolist() == [per_class // 10] * num_classes
    training = set(split.training_indices)
    assert len(training) == 45_000 and not training & set(val) and set(forget) <= training
    assert set(split.retain_indices) == training - set(forget)


def test_salun_tinyimagenet_follows_imagefolder_order_and_drops_its_last_image(tmp_path):
    """Tiny-ImageNet in SalUn: ImageFolder order (sorted class folders), TinyImageNetDataset's
    imgs[0:-1] (the last image never read), int(0.0 * n) held out, Df from the rest."""
    from torchvision.datasets import ImageFolder

    wnids = ("n03", "n01", "n02")  # wnids.txt order (our labels) differs from ImageFolder's sorted order
    base = make_tinyimagenet(tmp_path, wnids=wnids, per_class=4)
    data = open_classifier_data(f"tinyimagenet:{tmp_path}")
    split = make_forget_split(data, fraction=0.25, seed=3, protocol="salun")

    ours = [str(path) for wnid in wnids for path in sorted((base / "train" / wnid / "images").iterdir())]
    protocol = [path for path, _ in ImageFolder(str(base / "train")).imgs][0:-1]
    drawn = np.random.RandomState(2).choice(np.arange(len(protocol)), size=round(0.25 * len(protocol)), replace=False)
    assert list(split.forget_indices) == sorted(ours.index(protocol[p]) for p in drawn)
    assert split.val_indices == () and split.unused_indices == (ours.index(ImageFolder(str(base / "train")).imgs[-1][0]),)
    assert split.counts == {"forget": 3, "retain": 8, "train": 12, "val": 0, "unused": 1}
    assert split.unused_indices[0] not in split.training_indices


def test_the_split_file_round_trips_and_keeps_the_hold_out_out_of_every_training_subset(tmp_path):
    from negmerge_cli.classifier.sweep_run import ClassifierTrainer

    labels = _real_structure(10, 60)
    data = _labels_only("cifar10", labels, 10)
    split = make_forget_split(data, fraction=0.1, protocol="salun")
    split.save(tmp_path / "salun.json")
    back = load_forget_split(tmp_path / "salun.json", data)
    assert back == split and back.digest == split.digest
    for subset, expected in (("all", split.training_indices), ("retain", split.retain_indices),
                             ("forget", split.forget_indices)):
        trainer = SimpleNamespace(options=SimpleNamespace(subset=subset, objective="ce"), split=back, data=data)
        chosen = set(ClassifierTrainer._subset_indices(trainer))
        assert chosen == set(expected) and not chosen & set(split.val_indices)
    default = make_forget_split(data, fraction=0.1)
    assert set(json.loads(default.text())) == {"format", "dataset", "seed", "fraction", "classes", "counts",
                                               "forget_indices"}  # the default file is as it was


@pytest.mark.parametrize("change, fragment", [
    (lambda body: body.update(val_indices=body["forget_indices"][:1] + body["val_indices"][1:]),
     "val_indices[0]': "),
    (lambda body: body.pop("unused_indices"), "needs both val_indices and unused_indices"),
    (lambda body: body.update(protocol="negmerge"), "come with protocol 'salun' only"),
    (lambda body: body.update(protocol="other"), "protocol"),
    (lambda body: body.update(val_indices=[3, 2]), "val_indices[1]': 2 comes after 3"),
])
def test_a_hand_edited_salun_file_fails_in_one_line(tmp_path, change, fragment):
    data = _labels_only("cifar10", _real_structure(10, 60), 10)
    body = json.loads(make_forget_split(data, fraction=0.1, protocol="salun").text())
    change(body)
    (tmp_path / "bad.json").write_text(json.dumps(body))
    with pytest.raises(NegmergeError) as failure:
        load_forget_split(tmp_path / "bad.json", data)
    assert fragment in str(failure.value) and "\n" not in str(failure.value)


def test_library_refusals():
    cifar = _labels_only("cifar10", _real_structure(10, 60), 10)
    with pytest.raises(UsageError, match="unknown protocol"):
        make_forget_split(cifar, fraction=0.1, protocol="salun2")
    with pytest.raises(UsageError, match="must be at least 1"):
        make_forget_split(cifar, fraction=0.1, seed=0, protocol="salun")
    with pytest.raises(UsageError, match="empty Df"):
        make_forget_split(cifar, fraction=0.0005, protocol="salun")


@pytest.fixture
def cifar_root(tmp_path):
    make_cifar10_python(tmp_path / "cifar", n_per_batch=200)
    return tmp_path / "cifar"


def test_cli_salun_split_is_the_protocols_draw_and_byte_identical(cli, cifar_root, tmp_path):
    outputs = [tmp_path / "a.json", tmp_path / "b.json"]
    for target in outputs:
        made = cli("split", "--data", f"cifar10:{cifar_root}", "--protocol", "salun", "--forget-fraction", "0.1",
                   "-o", target)
        assert made.returncode == 0, made.stderr
    assert outputs[0].read_bytes() == outputs[1].read_bytes() and "hold-out" in made.stderr
    body = json.loads(outputs[0].read_text())
    labels = open_classifier_data(f"cifar10:{cifar_root}").train_labels
    remaining = len(labels) - len(body["val_indices"])
    val, forget = _protocol_draw(labels, round(0.1 * remaining), 2)
    assert body["protocol"] == "salun" and body["seed"] == 2 and body["unused_indices"] == []
    assert body["val_indices"] == val and body["forget_indices"] == forget
    assert body["counts"]["retain"] == len(labels) - len(val) - len(forget)


@pytest.mark.parametrize("args, fragments", [
    (["--data", "digits", "--protocol", "bogus"], ["--protocol", "'bogus'", "unknown protocol"]),
    (["--data", "digits", "--protocol", "salun"], ["--protocol salun", "digits", "--data"]),
    (["--protocol", "salun", "--forget-classes", "3"], ["--protocol salun", "--forget-fraction"]),
    (["--protocol", "salun", "--seed", "0"], ["--seed 0", "at least 1"]),
])
def test_cli_refusals(cli, cifar_root, tmp_path, args, fragments):
    data = [] if "--data" in args else ["--data", f"cifar10:{cifar_root}"]
    fraction = [] if "--forget-classes" in args else ["--forget-fraction", "0.1"]
    target = tmp_path / "split.json"
    assert_clean_failure(cli("split", *data, *fraction, *args, "-o", target), *fragments)
    assert not target.exists()


def test_eval_reports_dval_and_leaves_the_hold_out_out_of_dr(cli, cifar_root, tmp_path):
    from negmerge_cli.checkpoint import save_state_dict
    from negmerge_cli.classifier.models import architecture_metadata, create_classifier, load_classifier
    from negmerge_cli.core import files

    split_file, checkpoint, report = tmp_path / "salun.json", tmp_path / "model.safetensors", tmp_path / "eval.json"
    assert cli("split", "--data", f"cifar10:{cifar_root}", "--protocol", "salun", "--forget-fraction", "0.1",
               "-o", split_file).returncode == 0
    torch.manual_seed(0)
    with files.operation():
        save_state_dict(create_classifier("resnet8-cifar", 10).state_dict(), checkpoint,
                        architecture_metadata("resnet8-cifar", 10))
    run = cli("eval", "-m", "resnet8-cifar", "-c", checkpoint, "--data", f"cifar10:{cifar_root}", "--forget-split",
              split_file, "--device", "cpu", "-j", "0", "--json", report)
    assert run.returncode == 0, run.stderr
    result, body = json.loads(report.read_text()), json.loads(split_file.read_text())
    assert result["counts"]["dval"] == len(body["val_indices"]) and result["counts"]["dr"] == body["counts"]["retain"]
    assert "Dval" in run.stderr
    data = open_classifier_data(f"cifar10:{cifar_root}")
    model = load_classifier("resnet8-cifar", 10, str(checkpoint), torch.device("cpu")).eval()
    view = data.train_eval_view()
    with torch.no_grad():
        images = torch.stack([view[i][0] for i in body["val_indices"]])
        correct = model(images).argmax(1) == torch.as_tensor([view[i][1] for i in body["val_indices"]])
    assert round(result["val_acc"] * len(correct)) == int(correct.sum()) and 0 < result["val_acc"] < 1
