"""Templates, dataset specs, the paper's Val split, image folders and the built-in digits."""

from __future__ import annotations

import re

import pytest
import torch
from clip_helpers import make_image_folder
from torch.utils.data import random_split

from negmerge_cli.clip import datasets, templates
from negmerge_cli.core.errors import NegmergeError, UsageError


@pytest.mark.parametrize("name, count", [("cars", 8), ("dtd", 8), ("eurosat", 3), ("gtsrb", 3), ("mnist", 1),
                                         ("resisc45", 18), ("sun397", 2), ("svhn", 1), ("imagenet", 80)])
def test_template_counts_per_dataset(name, count):
    found = templates.templates_for(name)
    assert len(found) == count and len(set(found)) == count
    assert all(t.count("{}") == 1 for t in found)


def test_template_strings_are_the_task_arithmetic_ones():
    assert templates.templates_for("cars")[3] == "i love my {}!"
    assert templates.templates_for("gtsrb")[0] == 'a zoomed in photo of a "{}" traffic sign.'
    assert templates.templates_for("mnist") == ('a photo of the number: "{}".',)
    assert templates.templates_for("resisc45")[0] == "satellite imagery of {}."
    assert templates.templates_for("resisc45")[-1] == "aerial view of the {}."
    assert templates.templates_for("eurosat")[1] == "a centered satellite photo of a {}."
    assert templates.templates_for("imagenet")[0] == "a bad photo of a {}."
    assert templates.fill('a "{}" sign', "stop") == 'a "stop" sign'


@pytest.mark.parametrize("n, val", [(1438, 143), (60000, 5000), (73257, 5000), (50, 5), (100000, 5000)])
def test_val_split_sizes(n, val):
    train, held_out = datasets.val_split_indices(n)
    assert len(held_out) == val and len(train) == n - val
    assert not set(train) & set(held_out) and len(set(train) | set(held_out)) == n


def test_val_split_is_seeded_and_equals_task_vectors_random_split():
    first, again = datasets.val_split_indices(1000), datasets.val_split_indices(1000)
    assert first == again
    reference = random_split(range(1000), [900, 100], generator=torch.Generator().manual_seed(0))
    assert first == (list(reference[0].indices), list(reference[1].indices))
    assert datasets.val_split_indices(1000, seed=1) != first
    # task_vectors asserts this for MNIST (60,000 training images)
    assert datasets.val_split_indices(60000)[0][0] == 36044


def test_tiny_training_set_is_refused():
    with pytest.raises(UsageError, match="too small"):
        datasets.val_split_indices(5)


@pytest.mark.parametrize("text, kind, root, split", [
    ("digits", "digits", None, None),
    ("digits:val", "digits", None, "val"),
    ("mnist:/data", "mnist", "/data", None),
    ("imagenet:/data/imagenet:val", "imagenet", "/data/imagenet", "val"),
    ("some/folder:test", "folder", "some/folder", "test"),
])
def test_parse_spec(text, kind, root, split):
    spec = datasets.parse_spec(text)
    assert (spec.kind, str(spec.root) if spec.root else None, spec.split) == (kind, root, split)


def test_paper_dataset_without_root_is_a_usage_error():
    with pytest.raises(UsageError, match="local root"):
        datasets.parse_spec("mnist")


def test_digits_splits_and_classnames():
    train = datasets.load_dataset("digits", "train")
    val = datasets.load_dataset("digits:val", "train")
    test = datasets.load_dataset("digits", "test")
    assert (len(train), len(val), len(test)) == (1438 - 143, 143, 359)
    assert train.classnames == tuple("0123456789")
    image, label = val[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label < 10
    assert val.label == "digits:val" and test.label == "digits:test"


def test_image_folder_classes_splits_and_overrides(tmp_path):
    root = make_image_folder(tmp_path / "shapes", per_class=10)
    everything = datasets.load_dataset(str(root), "test")
    assert everything.split == "all" and len(everything) == 30
    assert everything.classnames == ("blue stripes", "green disc", "red square")
    assert everything.templates == ("a photo of a {}.",)
    val = datasets.load_dataset(f"{root}:val", "test")
    assert len(val) == 3
    names = tmp_path / "names.txt"
    names.write_text("stripes\ndisc\nsquare\n")
    custom = tmp_path / "templates.txt"
    custom.write_text("a drawing of a {}.\n{} on black\n")
    loaded = datasets.load_dataset(str(root), "test", classnames_file=names, templates_file=custom)
    assert loaded.classnames == ("stripes", "disc", "square")
    assert loaded.templates == ("a drawing of a {}.", "{} on black")
    with pytest.raises(UsageError, match="no test split"):
        datasets.load_dataset(f"{root}:test", "test")


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    make_image_folder(tmp_path / "ds" / "train", per_class=10)
    make_image_folder(tmp_path / "ds" / "test", per_class=4, seed=1)
    assert len(datasets.load_dataset(str(tmp_path / "ds"), "test")) == 12
    assert len(datasets.load_dataset(str(tmp_path / "ds"), "train")) == 27


def test_bad_folders_and_files(tmp_path):
    with pytest.raises(NegmergeError, match="does not exist"):
        datasets.load_dataset(str(tmp_path / "missing"), "test")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(NegmergeError, match="no images found"):
        datasets.load_dataset(str(tmp_path / "empty"), "test")
    root = make_image_folder(tmp_path / "bad", per_class=2)
    broken = root / "red_square" / "000.png"
    broken.write_bytes(b"not a png")
    data = datasets.load_dataset(str(root), "test")
    with pytest.raises(NegmergeError, match="000.png: cannot read image"):
        [data[i] for i in range(len(data))]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a photo\n")
    with pytest.raises(UsageError, match="exactly one"):
        datasets.load_dataset(str(root), "test", templates_file=wrong)
    with pytest.raises(UsageError, match="3 classes"):
        datasets.load_dataset(str(root), "test", classnames_file=wrong)


def test_classnames_by_folder_in_any_order(tmp_path):
    """FOLDER<TAB>NAME lines map names by folder, so their order cannot swap classes."""
    root = make_image_folder(tmp_path / "shapes", per_class=4)  # folders sort blue_stripes, green_disc, red_square
    names = tmp_path / "names.tsv"
    names.write_text("red_square\tsquare\nblue_stripes\tstripes\ngreen_disc\tdisc\n")
    loaded = datasets.load_dataset(str(root), "test", classnames_file=names)
    assert loaded.classnames == ("stripes", "disc", "square")
    assert loaded.class_mapping == {"blue_stripes": "stripes", "green_disc": "disc", "red_square": "square"}
    assert datasets.load_dataset(str(root), "test").class_mapping["green_disc"] == "green disc"
    assert datasets.load_dataset("digits", "test").class_mapping is None  # not an image folder

    for text, fragment in (("red_square\tsquare\nblue_stripes\tstripes\n", "does not name class folder(s) green_disc"),
                           ("red_square\ta\nred_square\tb\nblue_stripes\tc\ngreen_disc\td\n", "'red_square' twice"),
                           ("red_circle\ta\nblue_stripes\tb\ngreen_disc\tc\n", "'red_circle', which is not a class folder"),
                           ("red_square\t\nblue_stripes\tb\ngreen_disc\tc\n", "names.tsv:1: --classnames line is not FOLDER<TAB>NAME")):
        names.write_text(text)
        with pytest.raises(UsageError, match=re.escape(fragment)) as error:
            datasets.load_dataset(str(root), "test", classnames_file=names)
        assert "\n" not in str(error.value)
    names.write_text("\n".join(f"{d}\t{d}" for d in "0123456789"))
    with pytest.raises(UsageError, match="need an image-folder dataset"):
        datasets.load_dataset("digits", "test", classnames_file=names)
