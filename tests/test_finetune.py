"""End to end: real fine-tuning sweeps of the tiny OpenCLIP model on real images (the digits), on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from clip_helpers import TINY, free_port
from helpers import assert_clean_failure, run_cli

pytestmark = pytest.mark.slow
LEAN = {"OMP_NUM_THREADS": "2"}
COMMON = ["-m", TINY, "-d", "digits", "--steps", "3", "-b", "32", "-j", "0", "--lr", "1e-3"]
GRID = ["--randaug", "none", "--randaug", "rand-m2-n1-mstd0.5"]
NAMES = ["lr0.001_st3_wd0.1_ls0_seed0_noaug", "lr0.001_st3_wd0.1_ls0_seed0_rand-m2-n1-mstd0.5"]


def finetune(*args, **kwargs):
    return run_cli("finetune", *COMMON, *args, **kwargs)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two jobs (--point 0, --point 1) at once into one new folder, then the whole sweep, which skips both."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    jobs = [subprocess.Popen([sys.executable, "-m", "negmerge_cli", "finetune", *COMMON, "-o", str(out), *GRID,
                              "--point", str(i)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()
    stamp = (out / f"{NAMES[1]}.safetensors").stat().st_mtime_ns
    whole = finetune("-o", out, *GRID)
    assert whole.returncode == 0, whole.stderr
    return out, stamp, whole


def test_sweep_writes_base_points_and_manifest(sweep):
    out, _, result = sweep
    assert {p.name for p in out.glob("*.safetensors")} == {"base.safetensors"} | {f"{n}.safetensors" for n in NAMES}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["model"] == TINY and manifest["identity"]["data"] == "digits"
    assert 0 <= manifest["base"]["val"]["acc1"] <= 1
    points = {p["name"]: p for p in manifest["points"]}
    assert set(points) == set(NAMES)
    for name, point in points.items():
        assert point["status"] == "done" and point["file"] == f"{name}.safetensors"
        assert point["hyperparameters"]["steps"] == 3 and point["hyperparameters"]["lr"] == 1e-3
        assert set(point["val"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert point["train"]["images_seen"] == 96 and point["train"]["images_per_s"] > 0
    assert points[NAMES[1]]["hyperparameters"]["randaug"] == "rand-m2-n1-mstd0.5"
    assert not list(out.rglob("*.tmp"))
    assert result.stdout == ""  # results go to files; stdout stays clean


def test_finished_points_are_skipped(sweep):
    out, stamp, result = sweep
    assert f"skip {NAMES[0]}" in result.stderr and f"skip {NAMES[1]}" in result.stderr
    assert (out / f"{NAMES[1]}.safetensors").stat().st_mtime_ns == stamp
    again = finetune("-o", out, *GRID, "-q")
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_outputs_load_into_open_clip_and_carry_hyperparameters(sweep):
    import open_clip

    from negmerge_cli.clip.models import CONFIG_DIR

    out, _, _ = sweep
    open_clip.add_model_config(CONFIG_DIR)
    base = load_file(out / "base.safetensors")
    for name in NAMES:
        path = out / f"{name}.safetensors"
        model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(path))
        saved = load_file(path)
        assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
        # only the image encoder trained
        changed = {k for k in saved if not torch.equal(saved[k], base[k])}
        assert changed and all(k.startswith("visual.") for k in changed)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata()
        assert metadata["format"] == "pt"
        assert json.loads(metadata["negmerge.hyperparameters"])["steps"] == 3


def test_eval_of_sweep_outputs(sweep, tmp_path):
    out, _, _ = sweep
    report = tmp_path / "eval.json"
    result = run_cli("eval", "-m", TINY, "-c", out / f"{NAMES[0]}.safetensors", "-d", "digits", "-d", "digits:val",
                     "-j", "0", "--json", report)
    assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())
    assert [r["dataset"] for r in rows] == ["digits:test", "digits:val"]
    assert [r["n_images"] for r in rows] == [359, 143]
    manifest = json.loads((out / "manifest.json").read_text())
    val = next(p["val"] for p in manifest["points"] if p["name"] == NAMES[0])
    assert rows[1]["metrics"]["acc1"] == pytest.approx(val["acc1"])  # same Val split, same numbers
    assert "zero-shot classification" in result.stderr


def test_interrupted_sweep_resumes(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "negmerge_cli", "finetune", "-m", TINY, "-d", "digits", "-o", str(out),
            "--steps", "400", "-b", "16", "-j", "0", "-q"]
    process = subprocess.Popen(args, env={**os.environ, **LEAN}, stderr=subprocess.PIPE, text=True)
    record = out / ".records" / "lr1e-05_st400_wd0.1_ls0_seed0_noaug.json"
    deadline = time.time() + 120
    while not (record.exists() and json.loads(record.read_text())["status"] == "running"):
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "lr1e-05_st400_wd0.1_ls0_seed0_noaug.safetensors").exists()
    base_stamp = (out / "base.safetensors").stat().st_mtime_ns
    resumed = run_cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "10", "-b", "16", "-j", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "base.safetensors").stat().st_mtime_ns == base_stamp  # the base is reused, not rebuilt
    statuses = {p["name"]: p["status"] for p in json.loads((out / "manifest.json").read_text())["points"]}
    assert statuses == {"lr1e-05_st400_wd0.1_ls0_seed0_noaug": "running", "lr1e-05_st10_wd0.1_ls0_seed0_noaug": "done"}
    again = run_cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "400", "-b", "16", "-j", "0",
                    "--list-points")
    assert json.loads(again.stdout)["name"] == "lr1e-05_st400_wd0.1_ls0_seed0_noaug"


def test_two_process_torchrun_gloo(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
               str(free_port()), "-m", "negmerge_cli", "finetune", *COMMON, "-o", str(out), "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    point = json.loads((out / "manifest.json").read_text())["points"][0]
    assert point["status"] == "done" and point["train"]["processes"] == 2
    assert point["train"]["images_seen"] == 96  # global batch 32 = 2 processes x 16
    saved = load_file(out / f"{NAMES[0]}.safetensors")
    base = load_file(out / "base.safetensors")
    assert not torch.equal(saved["visual.proj"], base["visual.proj"])


def test_refuses_a_folder_holding_another_sweep(sweep):
    out, _, _ = sweep
    before = sorted(p.name for p in out.iterdir())
    result = run_cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "3", "-b", "64", "-j", "0")
    assert_clean_failure(result, str(out), "different sweep", "batch_size")
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_finetune_inputs_fail_cleanly_and_write_nothing(tmp_path):
    out = tmp_path / "never"
    assert_clean_failure(run_cli("finetune", "-m", "no-such-model", "-d", "digits", "-o", out, "--steps", "1"),
                         "unknown model 'no-such-model'")
    assert_clean_failure(run_cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--lr", ""), "no points", "--lr")
    assert_clean_failure(run_cli("finetune", "-m", TINY, "-d", str(tmp_path / "nowhere"), "-o", out, "--steps", "1"),
                         "nowhere", "does not exist")
    other = tmp_path / "other.safetensors"
    from negmerge_cli.clip import models

    models.save_checkpoint(models.create_model("negmerge-tiny-16"), other, {"format": "pt"})
    assert_clean_failure(finetune("-o", out, "-p", other), str(other), "does not fit model negmerge-tiny")
    assert not out.exists()


def test_grid_expansion_names_and_selection():
    from negmerge_cli.errors import UsageError
    from negmerge_cli.stages import FinetuneOptions, Grid, plan
    from negmerge_cli.sweep import PAPER_RANDAUG

    options = FinetuneOptions(model=TINY, data="digits", output=Path("unused"),
                              grid=Grid(lr=[1e-5, 5e-6], epochs=[2], seed=[0, 1], randaug=["paper"]))
    points = plan(options)
    assert len(PAPER_RANDAUG) == 30 and len(points) == 2 * 2 * 30
    assert points[0].name == "lr1e-05_ep2_wd0.1_ls0_seed0_rand-m1-n1-mstd0.5"
    assert len({p.name for p in points}) == len(points)
    options.point = [119]
    assert [p.index for p in plan(options)] == [119]
    options.point = [120]
    with pytest.raises(UsageError, match="point 120 is out of range"):
        plan(options)
    for bad in (Grid(randaug=["rand-zz"]), Grid(steps=[0]), Grid(epochs=[1], steps=[1]), Grid(seed=[])):
        with pytest.raises(UsageError):
            plan(FinetuneOptions(model=TINY, data="digits", output=Path("unused"), grid=bad))
    # paper datasets default to the paper's epochs: MNIST 30 with augmentation, 5 without
    mnist = FinetuneOptions(model=TINY, data="mnist:/nowhere", output=Path("unused"),
                            grid=Grid(randaug=["none", "rand-m1-n1-mstd0.5"]))
    assert [p.epochs for p in plan(mnist)] == [5, 30]


def test_randaugment_low_magnitudes_work_with_current_pillow():
    from PIL import Image

    from negmerge_cli.clip import models

    transform = models.transforms_for(models.create_model(TINY), train=True, randaug="rand-m1-n3-mstd0.5")
    torch.manual_seed(0)
    image = Image.new("RGB", (20, 20), (120, 30, 200))
    assert all(transform(image).shape == (3, 32, 32) for _ in range(200))


def test_crop_scale_and_hflip_reach_the_randaugment_transform(tmp_path, cli):
    from torchvision import transforms

    from negmerge_cli.clip import models

    model = models.create_model(TINY)
    default = models.transforms_for(model, train=True, randaug="rand-m1-n1-mstd0.5").transforms
    gentle = models.transforms_for(model, train=True, randaug="rand-m1-n1-mstd0.5", crop_scale=0.6, hflip=0.0).transforms
    crop = lambda ts: next(t for t in ts if type(t).__name__.startswith("RandomResizedCrop"))  # timm's own class
    assert crop(default).scale == (0.08, 1.0) and crop(gentle).scale == (0.6, 1.0)
    assert any(isinstance(t, transforms.RandomHorizontalFlip) for t in default)
    assert not any(isinstance(t, transforms.RandomHorizontalFlip) for t in gentle)
    out = tmp_path / "never"
    for option, value in (("--crop-scale", "0"), ("--crop-scale", "1.5"), ("--hflip", "-0.1")):
        assert_clean_failure(cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "1",
                                 "--randaug", "rand-m1-n1-mstd0.5", option, value), option)
    assert not out.exists()
