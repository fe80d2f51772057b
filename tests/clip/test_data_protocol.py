"""The paper's data protocol, as its released code (naver-ai/negmerge CLIP_MU) has it, through the
real CLI on tiny models and tiny datasets in the real on-disk layouts.

What each test pins, with the release file that does it:
- EuroSAT Val is the ``EuroSAT_splits/val`` folder and training uses all of ``train``
  (src/datasets/eurosat.py ``EuroSATVal``, found by name in src/datasets/registry.py);
- SUN397 and DTD are tested on their ``val`` folders (src/datasets/sun397.py, dtd.py);
- DTD's ``dtd/train`` folder is partition 1's train + val lists, read in ImageFolder order, so the
  seeded Val hold-out (registry.py ``split_train_into_train_val``) draws the same images;
- MNIST is resized to the model's size and made 3-channel gray before RandAugment, for training
  with RandAugment only (src/modeling.py, ``args.train_dataset == "MNISTVal"``);
- RandAugment keeps timm's default interpolation, ``random`` (src/modeling.py passes none).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from clip_helpers import (
    TINY,
    make_dtd_folders_from_release,
    make_dtd_release,
    make_eurosat_splits,
    make_mnist_raw,
    make_sun397,
)
from helpers import assert_clean_failure
from PIL import Image
from safetensors import safe_open

from negmerge_cli.clip import datasets, models
from negmerge_cli.training.sweep import NO_AUGMENTATION

pytestmark = pytest.mark.slow
RANDAUG = "rand-m2-n1-mstd0.5"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    models.save_checkpoint(models.create_model(TINY), path, {"format": "pt"})
    return path


def eval_rows(cli, base: Path, *specs: str) -> list[dict]:
    args = [a for spec in specs for a in ("-d", spec)]
    result = cli("eval", "-m", TINY, "-c", base, *args, "-j", "0", "-q")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def members(data: datasets.ImageSet) -> list[tuple[str, str, int]]:
    """(class folder, file name, label) of every image of a split, in order."""
    indices = data.indices if data.indices is not None else range(len(data))
    return [(Path(path).parent.name, Path(path).name, label)
            for path, label in (data.source.samples[i] for i in indices)]


# -- splits ---------------------------------------------------------------------------------------


def test_eurosat_val_is_the_val_folder_and_train_is_all_of_train(cli, base, tmp_path):
    root = make_eurosat_splits(tmp_path, train=10, val=3, test=4)
    rows = eval_rows(cli, base, f"eurosat:{root}:val", f"eurosat:{root}:train", f"eurosat:{root}")
    assert [r["n_images"] for r in rows] == [9, 30, 12]  # 3 classes x (val 3, all of train 10, test 4)
    assert [r["split_source"] for r in rows] == [
        "EuroSAT_splits/val folder", "all of EuroSAT_splits/train folder", "EuroSAT_splits/test folder"]


def test_eurosat_without_a_val_folder_falls_back_to_the_hold_out_and_says_so(cli, base, tmp_path):
    root = make_eurosat_splits(tmp_path, train=10, with_val=False)
    result = cli("eval", "-m", TINY, "-c", base, "-d", f"eurosat:{root}:val", "-j", "0", "-q")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)[0]
    assert row["n_images"] == 3 and row["split_source"].startswith("seeded 10% hold-out")
    assert "no val folder" in result.stderr


def test_sun397_is_tested_on_its_val_folder(cli, base, tmp_path):
    root = make_sun397(tmp_path, train=10, val=3, test=5)
    (row,) = eval_rows(cli, base, f"sun397:{root}")
    assert (row["dataset"], row["n_images"], row["split_source"]) == (f"sun397:{root}:test", 9, "sun397/val folder")
    assert datasets.load_dataset(f"sun397:{root}", "test").classnames == ("abbey", "bakery", "canyon")


def test_dtd_release_lists_give_the_task_vectors_folders_val_and_test(cli, base, tmp_path):
    release = make_dtd_release(tmp_path / "release", per_list=10)
    folders = make_dtd_folders_from_release(release, tmp_path / "folders")
    for split in ("val", "train", "test"):
        from_lists = datasets.load_dataset(f"dtd:{release}:{split}", "test")
        from_folders = datasets.load_dataset(f"dtd:{folders}:{split}", "test")
        assert members(from_lists) == members(from_folders), split
        assert from_lists.classnames == from_folders.classnames == ("banded", "dotted", "striped")
    assert len(datasets.load_dataset(f"dtd:{folders}:val", "test")) == 6  # 10% of train1 + val1 (60)
    rows = eval_rows(cli, base, f"dtd:{release}", f"dtd:{folders}", f"dtd:{release}:val", f"dtd:{folders}:val")
    assert [r["n_images"] for r in rows] == [30, 30, 6, 6]
    assert rows[0]["metrics"] == rows[1]["metrics"] and rows[2]["metrics"] == rows[3]["metrics"]
    assert [r["split_source"] for r in rows[:2]] == ["dtd labels/test1.txt", "dtd/val folder"]


def test_dtd_release_with_a_stray_test_class_is_a_clean_error(cli, base, tmp_path):
    release = make_dtd_release(tmp_path, per_list=4)
    listing = release / "dtd" / "dtd" / "labels" / "test1.txt"
    listing.write_text(listing.read_text() + "zigzag/zigzag_0001.jpg\n")
    assert_clean_failure(cli("eval", "-m", TINY, "-c", base, "-d", f"dtd:{release}", "-j", "0"),
                         "test1.txt", "zigzag")


# -- training transforms --------------------------------------------------------------------------


def _train_transform(kind: str, randaug: str = RANDAUG, **options):
    from negmerge_cli.clip.sweep_run import train_transform
    from negmerge_cli.training.options import FinetuneOptions

    model = models.create_model(TINY)
    return train_transform(model, FinetuneOptions(TINY, "digits", Path("unused"), **options), randaug, kind)


def _unnormalised(tensor: torch.Tensor) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return tensor * torch.tensor(OPENAI_DATASET_STD)[:, None, None] + torch.tensor(OPENAI_DATASET_MEAN)[:, None, None]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_mnist_randaug_resizes_to_the_model_size_and_makes_three_gray_channels(tmp_path):
    from torchvision import transforms

    mnist = _train_transform("mnist")
    assert isinstance(mnist.transforms[0], transforms.Resize) and mnist.transforms[0].size == 32
    assert isinstance(mnist.transforms[1], transforms.Grayscale) and mnist.transforms[1].num_output_channels == 3
    data = datasets.load_dataset(f"mnist:{make_mnist_raw(tmp_path)}", "train").with_transform(mnist)
    assert data[0][0].shape == (3, 32, 32)
    # magnitude 0: every RandAugment op keeps a gray image gray, so the channels must agree
    gray = _train_transform("mnist", "rand-m0-n3-mstd0")
    colour = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    _seed_everything(0)  # timm draws with random and numpy, torchvision with torch
    for _ in range(20):
        image = _unnormalised(gray(colour))
        assert torch.allclose(image[0], image[1], atol=1e-5) and torch.allclose(image[1], image[2], atol=1e-5)
    other = _train_transform("eurosat", "rand-m0-n3-mstd0")
    coloured = [_unnormalised(other(colour)) for _ in range(20)]
    assert any(not torch.allclose(x[0], x[1], atol=1e-2) for x in coloured)  # other datasets keep their colours


def test_mnist_without_randaug_and_mnist_eval_are_not_grayscaled():
    from torchvision import transforms

    for transform in (_train_transform("mnist", NO_AUGMENTATION), models.transforms_for(models.create_model(TINY), False)):
        assert not any(isinstance(t, transforms.Grayscale) for t in transform.transforms)


def test_randaug_interpolation_is_random_by_default_and_bicubic_on_request():
    from PIL.Image import Resampling

    def resampling(transform):
        crop = next(t for t in transform.transforms if type(t).__name__.startswith("RandomResizedCrop"))
        augment = next(t for t in transform.transforms if type(t).__name__ == "RandAugment")
        return tuple(crop.interpolation) if isinstance(crop.interpolation, (tuple, list)) else crop.interpolation, \
            augment.ops[0].kwargs["resample"]

    crop, ops = resampling(_train_transform("cars"))
    assert len(crop) == 2 and set(ops) == {Resampling.BILINEAR, Resampling.BICUBIC}  # chosen per call
    crop, ops = resampling(_train_transform("cars", randaug_interpolation="bicubic"))
    assert crop.value == "bicubic" and ops == Resampling.BICUBIC


def test_unknown_randaug_interpolation_is_refused(cli, tmp_path):
    out = tmp_path / "never"
    result = cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "1", "--randaug", RANDAUG,
                 "--randaug-interpolation", "lanczos")
    assert_clean_failure(result, "--randaug-interpolation", "lanczos", "random")
    assert not out.exists()


# -- what a sweep records ------------------------------------------------------------------------


def test_finetune_records_the_data_protocol(cli, tmp_path):
    """MNIST (torchvision raw files) with RandAugment: the manifest, the point record and the
    checkpoint say where train and Val came from and how the images were augmented."""
    root, out = make_mnist_raw(tmp_path / "data"), tmp_path / "sweep"
    result = cli("finetune", "-m", TINY, "-d", f"mnist:{root}", "-o", out, "--steps", "1", "-b", "6", "-j", "0",
                 "--randaug", RANDAUG, "-q")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["train_split"] == "MNIST train (torchvision) minus the Val hold-out"
    assert manifest["identity"]["val_split"].startswith("seeded 10% hold-out")
    assert manifest["identity"]["randaug_interpolation"] == "random"
    (point,) = manifest["points"]
    transform = point["train"]["transform"]
    assert transform.startswith("resize to the model's size, 3-channel grayscale") and "interpolation random" in transform
    with safe_open(out / point["file"], "pt") as handle:
        metadata = handle.metadata()
    assert metadata["negmerge.transform"] == transform
    assert metadata["negmerge.val_split"] == manifest["identity"]["val_split"]


def test_a_sweep_with_another_interpolation_is_another_sweep(cli, tmp_path):
    root, out = make_eurosat_splits(tmp_path / "data", train=4, val=2, test=1), tmp_path / "sweep"
    common = ["-m", TINY, "-d", f"eurosat:{root}", "-o", out, "--steps", "1", "-b", "6", "-j", "0", "-q"]
    assert cli("finetune", *common).returncode == 0
    identity = json.loads((out / "manifest.json").read_text())["identity"]
    assert (identity["train_split"], identity["val_split"]) == ("all of EuroSAT_splits/train folder",
                                                                "EuroSAT_splits/val folder")
    assert_clean_failure(cli("finetune", *common, "--randaug-interpolation", "bicubic"),
                         "randaug_interpolation", "bicubic")
