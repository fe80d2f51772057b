"""Hostile datasets: a dataset's own files (label arrays, class lists,
annotations, split lists, symlinks) are input like any other. Labels must be integers naming one
of its classes and every file it names must lie inside its root, checked when the dataset is
opened, by `split`, classifier and CLIP `finetune` and `eval` alike; and a sweep that fails before
its first point leaves nothing behind.

Each row builds its dataset inside the row's workspace and runs the real CLI; `assert_refused`
checks one `error:` line naming the file and the entry at fault, no traceback, and a workspace
byte-identical afterwards: no split file, no sweep folder, no base, no lock, no sweep.json.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from classifier_helpers import make_cifar10_binary, make_cifar10_python, make_tinyimagenet, write_cifar_batch
from clip_helpers import make_dtd_release, make_image_folder, make_mnist_raw
from hostile import assert_refused
from PIL import Image

CLASSIFIER = ["--model", "resnet8-cifar", "--batch-size", "4", "--workers", "0", "--steps", "1"]


def split(w, data) -> list:
    return ["split", "--data", data, "--forget-fraction", "0.5", "-o", w.out / "split.json"]


def classifier_finetune(w, data, output=None) -> list:
    return ["finetune", *CLASSIFIER, "--data", data, "-o", output or w.out / "sweep"]


def clip_finetune(w, data, output=None) -> list:
    return w.finetune("-d", data, "-q", output=output)  # the last -d wins: this dataset instead of ws.shapes


# -- datasets ---------------------------------------------------------------------------------


def cifar10(w, batch: str, labels) -> str:
    """cifar10:ROOT whose ``batch`` holds ``labels`` (any values) for its six images."""
    root = w.root / "cifar"
    data, _ = make_cifar10_python(root)[batch]
    write_cifar_batch(root / "cifar-10-batches-py" / batch, data, labels, batch)
    return f"cifar10:{root}"


def cifar100_label(w, value) -> str:
    folder = w.root / "c100" / "cifar-100-python"
    folder.mkdir(parents=True)
    pixels = np.zeros((3, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "train", pixels, [1, value, 5], "train", b"fine_labels")
    write_cifar_batch(folder / "test", pixels, [1, 2, 3], "test", b"fine_labels")
    return f"cifar100:{w.root / 'c100'}"


def cifar10_binary_label(w, value: int) -> str:
    folder = make_cifar10_binary(w.root / "bin")
    records = np.frombuffer((folder / "data_batch_2.bin").read_bytes(), dtype=np.uint8).reshape(-1, 3073).copy()
    records[1, 0] = value
    (folder / "data_batch_2.bin").write_bytes(records.tobytes())
    return f"cifar10:{w.root / 'bin'}"


def plant_image(path: Path, size: int = 8) -> Path:
    """A real image where no dataset file may lead: a reader that followed the name would read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 200, dtype=np.uint8)).save(path)
    return path


def tinyimagenet_climbing_wnid(w) -> str:
    """wnids.txt lists ``../../../outside``: train/../../../outside is a real class folder outside ROOT."""
    root = w.root / "tin"
    base = make_tinyimagenet(root)
    plant_image(w.root / "outside" / "images" / "secret.png")
    with (base / "wnids.txt").open("a") as listing:
        listing.write("../../../outside\n")
    return f"tinyimagenet:{root}"


def tinyimagenet_annotations(w, line: str) -> str:
    root = w.root / "tin"
    base = make_tinyimagenet(root)
    (base / "val" / "val_annotations.txt").write_text(f"val_0_0.png\tn02\t0\t0\t8\t8\n{line}\n")
    return f"tinyimagenet:{root}"


def classifier_folder(w) -> Path:
    root = w.root / "folder"
    for split_name in ("train", "test"):
        make_image_folder(root / split_name, per_class=2, size=8)
    return root


def link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def dtd_list_entry(w, line: str) -> str:
    release = make_dtd_release(w.root / "dtd-release", per_list=4)
    base = release / "dtd" / "dtd"
    plant_image(base / "outside.jpg", 24)  # where images/../outside.jpg leads
    with (base / "labels" / "train1.txt").open("a") as listing:
        listing.write(line + "\n")
    return f"dtd:{release}"


def gtsrb(w, test_rows: list[str]) -> str:
    """torchvision's GTSRB layout, tiny: Training/<class>/*.ppm, Final_Test/Images + GT-final_test.csv."""
    root = w.root / "gtsrb-root"
    base = root / "gtsrb"
    rng = np.random.default_rng(0)
    for label in range(3):
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:05d}.ppm")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(images / "00000.ppm")
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    (base / "GT-final_test.csv").write_text("\n".join([header, "00000.ppm;16;16;0;0;16;16;1", *test_rows]) + "\n")
    plant_image(w.root / "x.ppm", 16)  # where ../../../../../x.ppm from Final_Test/Images leads
    return f"gtsrb:{root}"


def mnist_label(w, value: int) -> str:
    root = make_mnist_raw(w.root / "mnist-root", train=40, test=10)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8 + 3] = value  # after the 8-byte header: the fourth test label
    labels.write_bytes(bytes(raw))
    return f"mnist:{root}"


def stanford_cars(w, fname: str = "00000.jpg", label: int = 1) -> str:
    """torchvision's StanfordCars layout (devkit .mat files), 3 classes; the first training
    annotation names ``fname`` with class ``label`` (1-based, as in the release)."""
    root = w.root / "cars-root"
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(["Audi A4", "BMW M3", "Citroen C4"], dtype=object)})
    for folder, annotation_file in (("cars_train", base / "devkit" / "cars_train_annos.mat"),
                                    ("cars_test", base / "cars_test_annos_withlabels.mat")):
        (base / folder).mkdir()
        rows = np.zeros(12, dtype=[("fname", "O"), ("class", "O")])
        for i in range(12):
            plant_image(base / folder / f"{i:05d}.jpg", 16)
            rows[i] = (f"{i:05d}.jpg", np.uint8(i % 3 + 1))
        if folder == "cars_train":
            rows[0] = (fname, np.uint8(label))
        scipy.io.savemat(annotation_file, {"annotations": rows})
    plant_image(w.root / "outside.jpg", 16)
    return f"cars:{root}"


def sun397_unlisted_folder(w) -> str:
    """torchvision's SUN397 layout whose images lie in a class folder ClassName.txt does not list."""
    base = w.root / "sun-root" / "SUN397"
    (base / "ClassName.txt").parent.mkdir(parents=True)
    (base / "ClassName.txt").write_text("/a/abbey\n")
    for folder in ("a/abbey", "b/bakery"):
        for i in range(6):
            plant_image(base / folder / f"sun_{folder[0]}{i}.jpg", 16)
    return f"sun397:{w.root / 'sun-root'}"


def truncated_images(w) -> Path:
    """ws.shapes with every PNG cut in half: the header reads (the pre-flight check passes), the
    pixels do not, so the run fails while decoding its Val images, after the base is written."""
    for image in w.shapes.rglob("*.png"):
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    return w.shapes


def empty_output_folder(w) -> Path:
    """An existing, empty output folder: a failed run must leave it empty (no lock, no base)."""
    (w.out / "sweep").mkdir()
    return w.out / "sweep"


def stray_output_folder(w) -> Path:
    """An existing output folder holding a safetensors file and no sweep.json."""
    folder = empty_output_folder(w)
    shutil.copyfile(w.a, folder / "stray.safetensors")
    return folder


# -- the table --------------------------------------------------------------------------------

LABEL = "not a class (this dataset has 10 classes: 0..9)"
NOT_PLAIN = "is not a plain file or folder name"

ROWS = {
    # CIFAR python batches: labels that are not integers in 0..C-1
    "cifar10-label-10-split": lambda w: (split(w, cifar10(w, "data_batch_3", [0, 1, 10, 2, 3, 4])),
                                         ["data_batch_3", "'labels'", "entry 2 is 10", LABEL]),
    "cifar10-label-minus-1-finetune": lambda w: (classifier_finetune(w, cifar10(w, "test_batch", [0, -1, 2, 3, 4, 5])),
                                                 ["test_batch", "'labels'", "entry 1 is -1", LABEL]),
    "cifar10-float-label-split": lambda w: (split(w, cifar10(w, "data_batch_1", [0, 1.5, 2, 3, 4, 5])),
                                            ["data_batch_1", "'labels'", "entry 1 is 1.5", "not an integer label"]),
    "cifar10-string-label-finetune": lambda w: (
        classifier_finetune(w, cifar10(w, "data_batch_5", [0, 1, "2", 3, 4, 5])),
        ["data_batch_5", "'labels'", "entry 2 is '2'", "not an integer label"]),
    "cifar10-bool-labels-split": lambda w: (split(w, cifar10(w, "data_batch_4", [True] * 6)),
                                            ["data_batch_4", "entry 0 is True", "not an integer label"]),
    "cifar10-ragged-labels-split": lambda w: (split(w, cifar10(w, "data_batch_2", [[0], [1, 2], 3, 4, 5, 6])),
                                              ["data_batch_2", "'labels' must be arrays"]),
    "cifar100-fine-label-100-split": lambda w: (split(w, cifar100_label(w, 100)),
                                                ["cifar-100-python/train", "'fine_labels'", "entry 1 is 100",
                                                 "100 classes: 0..99"]),
    # CIFAR binary batch: a label byte out of range
    "cifar10-binary-label-byte-split": lambda w: (split(w, cifar10_binary_label(w, 200)),
                                                  ["data_batch_2.bin", "label bytes", "entry 1 is 200", LABEL]),
    "cifar10-binary-label-byte-finetune": lambda w: (classifier_finetune(w, cifar10_binary_label(w, 10)),
                                                     ["data_batch_2.bin", "label bytes", "entry 1 is 10", LABEL]),
    # Tiny-ImageNet: names from wnids.txt and val_annotations.txt
    "tinyimagenet-wnid-climbs-out-split": lambda w: (split(w, tinyimagenet_climbing_wnid(w)),
                                                     ["wnids.txt", "line 4", "'../../../outside'", NOT_PLAIN]),
    "tinyimagenet-wnid-climbs-out-finetune": lambda w: (classifier_finetune(w, tinyimagenet_climbing_wnid(w)),
                                                        ["wnids.txt", "line 4", NOT_PLAIN]),
    "tinyimagenet-unknown-wnid-finetune": lambda w: (
        classifier_finetune(w, tinyimagenet_annotations(w, "val_1_0.png\tn99\t0\t0\t8\t8")),
        ["val_annotations.txt", "line 2", "a class of wnids.txt"]),
    "tinyimagenet-annotation-climbs-out-split": lambda w: (
        split(w, tinyimagenet_annotations(w, "..\tn01\t0\t0\t8\t8")),
        ["val_annotations.txt", "line 2", "'..'", NOT_PLAIN]),
    # CLIP datasets whose class lists or split lists come from ROOT
    "dtd-list-class-climbs-out-finetune": lambda w: (clip_finetune(w, dtd_list_entry(w, "../outside.jpg")),
                                                     ["train1.txt", "line 13", "'..'", NOT_PLAIN]),
    "dtd-list-absolute-eval": lambda w: (w.eval("-d", dtd_list_entry(w, "/outside.jpg")),
                                         ["train1.txt", "line 13", "''", NOT_PLAIN]),
    "gtsrb-csv-class-43-finetune": lambda w: (clip_finetune(w, gtsrb(w, ["00000.ppm;16;16;0;0;16;16;43"])),
                                              ["GT-final_test.csv", "entry 1 is 43", "43 classes: 0..42"]),
    "gtsrb-csv-class-not-a-number-finetune": lambda w: (clip_finetune(w, gtsrb(w, ["00000.ppm;16;16;0;0;16;16;x"])),
                                                        ["GT-final_test.csv", "cannot read the gtsrb lists",
                                                         "invalid literal for int()"]),
    "gtsrb-csv-file-climbs-out-finetune": lambda w: (
        clip_finetune(w, gtsrb(w, ["../../../../../x.ppm;16;16;0;0;16;16;2"])),
        ["x.ppm", "outside the root of gtsrb:"]),
    "mnist-label-byte-12-finetune": lambda w: (clip_finetune(w, mnist_label(w, 12)),
                                               ["t10k-labels-idx1-ubyte", "entry 3 is 12", LABEL]),
    "cars-annotation-climbs-out-finetune": lambda w: (clip_finetune(w, stanford_cars(w, fname="../../../outside.jpg")),
                                                      ["outside.jpg", "outside the root of cars:"]),
    "cars-class-0-finetune": lambda w: (clip_finetune(w, stanford_cars(w, label=0)),
                                        ["cars_train_annos.mat", "entry 0 is -1", "3 classes: 0..2"]),
    "sun397-folder-not-in-class-list-finetune": lambda w: (clip_finetune(w, sun397_unlisted_folder(w)),
                                                           ["ClassName.txt", "has no 'bakery'"]),
    # a sweep that fails before its first point leaves nothing: no folder, base, lock or sweep.json
    "clip-sweep-fails-decoding-val-new-folder": lambda w: (clip_finetune(w, truncated_images(w)),
                                                           ["cannot read image", "truncated"]),
    "clip-sweep-fails-decoding-val-empty-folder": lambda w: (
        clip_finetune(w, truncated_images(w), output=empty_output_folder(w)), ["cannot read image"]),
    "clip-sweep-folder-with-stray-safetensors": lambda w: (
        clip_finetune(w, w.shapes, output=stray_output_folder(w)), ["holds safetensors files but no sweep.json"]),
    "classifier-sweep-folder-with-stray-safetensors": lambda w: (
        classifier_finetune(w, classifier_folder(w), output=stray_output_folder(w)),
        ["holds safetensors files but no sweep.json"]),
}


@pytest.mark.parametrize("name", ROWS)
def test_hostile_dataset_is_refused_and_nothing_is_written(ws, cli, name):
    assert_refused(ws, cli, ROWS[name])


# -- what stays accepted ------------------------------------------------------------------------


def test_links_are_the_users_own_arrangement_and_are_followed(tmp_path):
    """Only names from a dataset's own lists are confined to ROOT; the user's symlinks are followed:
    a dataset linked into place as a whole, links between its own folders, and an image or a class
    folder linked in from elsewhere (a link farm) read as before."""
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.clip.datasets import load_dataset

    real = tmp_path / "real"
    for split_name in ("train", "test"):
        make_image_folder(real / split_name, per_class=2, size=8)
    link(real / "train" / "extra", real / "train" / "green_disc")  # a class folder linked within the root
    link(tmp_path / "linked", real)
    data = open_classifier_data(str(tmp_path / "linked"))
    assert (len(data.train), len(data.test), data.num_classes) == (8, 6, 4)  # train/extra: a fourth class
    assert len(load_dataset(str(tmp_path / "linked" / "train"), "test")) == 8
    elsewhere = make_image_folder(tmp_path / "elsewhere", per_class=1, size=8)
    link(real / "train" / "zebra", elsewhere / "red_square")  # a class folder from elsewhere
    link(real / "train" / "green_disc" / "linked.png", next((elsewhere / "green_disc").iterdir()))
    data = open_classifier_data(str(real))
    assert (len(data.train), data.num_classes) == (11, 5)


def test_a_lock_removed_while_waiting_for_it_is_taken_anew(tmp_path):
    """A run that undoes a folder it made removes its lock file while another job may wait on it:
    the waiter must then lock the file now at the path (made anew), not the removed one, or a
    third job could hold the lock at the same time."""
    import fcntl

    from negmerge_cli.core import files

    lock = tmp_path / "sweep" / ".lock"
    holding, probed = threading.Event(), threading.Event()

    def wait_for_the_lock():
        with files.locked(lock):
            holding.set()
            probed.wait(10)

    waiter = threading.Thread(target=wait_for_the_lock)
    with files.locked(lock):
        waiter.start()
        time.sleep(0.3)  # the waiter blocks on this lock file
        lock.unlink()
        lock.parent.rmdir()
    try:
        assert holding.wait(10)
        with open(lock, "rb") as third:  # the lock file at the path is held: a third job must wait
            with pytest.raises(BlockingIOError):
                fcntl.flock(third.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        probed.set()
        waiter.join(10)
