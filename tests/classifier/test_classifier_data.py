"""Classifier data and forget splits: CIFAR readers on synthetic files in torchvision's
exact formats, a hostile pickle, `negmerge split` reproducibility, disjointness and bad inputs."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # see test_classifier_train.py

from classifier_helpers import make_cifar10_binary
from classifier_helpers import make_cifar10_python as _cifar10_python
from classifier_helpers import make_tinyimagenet as _tinyimagenet

from negmerge_cli.classifier.data import open_classifier_data
from negmerge_cli.classifier.models import create_classifier, load_classifier
from negmerge_cli.classifier.split import load_forget_split, make_forget_split
from negmerge_cli.core.errors import CheckpointError, NegmergeError, UsageError
from negmerge_cli.stages.registry import family_of
from helpers import assert_clean_failure, run_cli


def test_cifar10_pickles_read_in_torchvision_layout(tmp_path):
    batches = _cifar10_python(tmp_path)
    data = open_classifier_data(f"cifar10:{tmp_path}")
    assert (len(data.train), len(data.test), data.num_classes) == (30, 6, 10)
    raw, labels = batches["data_batch_2"]
    image = data.train.images[6]  # first image of the second batch, C,H,W uint8
    assert torch.equal(image, torch.from_numpy(raw[0].reshape(3, 32, 32)))
    assert int(data.train.labels[6]) == labels[0]
    assert data.identity["n_train"] == 30 and len(data.identity["train_labels_sha256"]) == 64


def test_cifar10_binary_and_cifar100(tmp_path):
    rng = np.random.default_rng(1)
    make_cifar10_binary(tmp_path / "bin", n_per_batch=4)
    data = open_classifier_data(f"cifar10:{tmp_path / 'bin'}")
    assert (len(data.train), len(data.test)) == (20, 4)
    hundred = tmp_path / "c100" / "cifar-100-python"
    hundred.mkdir(parents=True)
    for name in ("train", "test"):
        batch = {b"fine_labels": [1, 99, 5], b"coarse_labels": [0, 1, 2], b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8)}
        (hundred / name).write_bytes(pickle.dumps(batch))
    data = open_classifier_data(f"cifar100:{tmp_path / 'c100'}")
    assert data.num_classes == 100 and data.train.labels.tolist() == [1, 99, 5]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_tinyimagenet_layout(tmp_path):
    base = _tinyimagenet(tmp_path)
    data = open_classifier_data(f"tinyimagenet:{tmp_path}")
    assert (data.name, data.num_classes, len(data.train), len(data.test)) == ("tinyimagenet", 3, 6, 6)
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]  # wnids.txt order
    # val labels come from the annotations (each val image is labelled with the next class here)
    assert data.test.labels.tolist() == [1, 1, 2, 2, 0, 0]
    assert data.train.images[2, :, 0, 0].tolist() == [40, 40, 40]  # n02's first image (N,C,H,W)
    assert open_classifier_data(f"tinyimagenet:{base}").identity["n_test"] == 6  # the folder itself

    (base / "val" / "val_annotations.txt").write_text("val_0_0.png\tn09\t0\t0\t8\t8\n")
    with pytest.raises(NegmergeError, match="val_annotations.txt: line 1: .*wnids.txt"):
        open_classifier_data(f"tinyimagenet:{tmp_path}")
    (base / "wnids.txt").unlink()
    with pytest.raises(NegmergeError, match="not Tiny-ImageNet \\(wnids.txt is missing\\)"):
        open_classifier_data(f"tinyimagenet:{tmp_path}")


def test_tinyimagenet_through_split_and_a_bad_annotation_fails_cleanly(cli, tmp_path):
    base = _tinyimagenet(tmp_path)
    made = cli("split", "--data", f"tinyimagenet:{tmp_path}", "--forget-classes", "1", "-o", tmp_path / "f.json")
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "f.json").read_text())["counts"]["forget"] == 2
    (base / "val" / "val_annotations.txt").write_text("val_0_0.png\n")
    assert_clean_failure(cli("split", "--data", f"tinyimagenet:{tmp_path}", "--forget-classes", "1",
                             "-o", tmp_path / "g.json"), "val_annotations.txt", "line 1")
    assert not (tmp_path / "g.json").exists()


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path, monkeypatch):
    _cifar10_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NegmergeError, match="refused: its pickle asks for '(posix|os).system'"):
        open_classifier_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "PWNED").exists()


def test_split_same_arguments_same_bytes_and_disjoint(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for path in (first, second):
        result = run_cli("split", "--data", "digits", "--forget-fraction", "0.1", "--seed", "3", "-o", path)
        assert result.returncode == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()
    data = open_classifier_data("digits")
    split = load_forget_split(first, data)
    forget, retain = set(split.forget_indices), set(split.retain_indices)
    assert not forget & retain and forget | retain == set(range(1438))
    assert len(forget) == round(0.1 * 1438) and split.counts == {"forget": 144, "retain": 1294, "train": 1438}
    assert make_forget_split(data, fraction=0.1, seed=4).forget_indices != split.forget_indices


def test_class_split_takes_every_example_of_the_classes():
    data = open_classifier_data("digits")
    split = make_forget_split(data, classes=[3, 5])
    labels = data.train_labels
    assert set(split.forget_indices) == set(np.flatnonzero((labels == 3) | (labels == 5)).tolist())


@pytest.mark.parametrize("args, fragments", [
    (["--forget-fraction", "0"], ["--forget-fraction", "between 0 and 1"]),
    (["--forget-fraction", "1"], ["--forget-fraction"]),
    (["--forget-fraction", "0.0001"], ["empty Df"]),
    (["--forget-classes", "10"], ["class 10 does not exist"]),
    (["--forget-classes", "0,1,2,3,4,5,6,7,8,9"], ["all 10 classes"]),
    ([], ["--forget-fraction", "--forget-classes"]),
])
def test_split_bad_inputs(cli, tmp_path, args, fragments):
    target = tmp_path / "split.json"
    result = cli("split", "--data", "digits", *args, "-o", target)
    assert result.returncode != 0 and not target.exists()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and all(f in lines[0] for f in fragments), result.stderr


def test_split_for_another_dataset_is_refused(tmp_path):
    _cifar10_python(tmp_path)
    split = make_forget_split(open_classifier_data(f"cifar10:{tmp_path}"), fraction=0.5)
    split.save(tmp_path / "cifar.json")
    with pytest.raises(UsageError, match="made for another dataset"):
        load_forget_split(tmp_path / "cifar.json", open_classifier_data("digits"))


def test_families_and_models():
    assert family_of("resnet18-cifar") == family_of("resnet18") == "classifier"
    assert family_of("negmerge-tiny") == "clip"
    with pytest.raises(UsageError, match="unknown model"):
        family_of("resnet-nope")
    model = create_classifier("resnet8-cifar", 10)
    assert model.conv1.stride == (1, 1) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_load_classifier_refuses_a_class_count_mismatch(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = create_classifier("resnet8-cifar", 100).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "c100.safetensors")
    with pytest.raises(CheckpointError, match="fc.weight has 100 rows; num_classes is 10"):
        load_classifier("resnet8-cifar", 10, tmp_path / "c100.safetensors")
    loaded = load_classifier("resnet8-cifar", 100, tmp_path / "c100.safetensors")
    assert torch.equal(loaded.state_dict()["fc.weight"], state["fc.weight"])
