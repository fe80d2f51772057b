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
from clip_helpers import TINY, free_port
from helpers import assert_clean_failure, run_cli
from safetensors import safe_open
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
LEAN = {"OMP_NUM_THREADS": "2"}
COMMON = ["-m", TINY, "-d", "digits", "--steps", "3", "-b", "32", "-j", "0", "--lr", "1e-3"]
GRID = ["--randaug", "none", "--randaug", "rand-m2-n1-mstd0.5"]
NAMES = ["lr0.001_st3_wd0.1_ls0_seed0_noaug", "lr0.001_st3_wd0.1_ls0_seed0_rand-m2-n1-mstd0.5"]


def finetune(*args, run=run_cli, **kwargs):
    """``negmerge finetune`` of the tiny model on digits; ``run``: a subprocess, or the ``cli`` fixture."""
    return run("finetune", *COMMON, *args, **kwargs)


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


def test_finished_points_are_skipped(sweep, cli):
    out, stamp, result = sweep
    assert f"skip {NAMES[0]}" in result.stderr and f"skip {NAMES[1]}" in result.stderr
    assert (out / f"{NAMES[1]}.safetensors").stat().st_mtime_ns == stamp
    again = finetune("-o", out, *GRID, "-q", run=cli)
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


def test_eval_of_sweep_outputs(sweep, tmp_path, cli):
    out, _, _ = sweep
    report = tmp_path / "eval.json"
    result = cli("eval", "-m", TINY, "-c", out / f"{NAMES[0]}.safetensors", "-d", "digits", "-d", "digits:val",
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


def test_refuses_a_folder_holding_another_sweep(sweep, cli):
    out, _, _ = sweep
    before = sorted(p.name for p in out.iterdir())
    result = cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "3", "-b", "64", "-j", "0")
    assert_clean_failure(result, str(out), "different sweep", "batch_size")
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_finetune_inputs_fail_cleanly_and_write_nothing(tmp_path, cli):
    out = tmp_path / "never"
    assert_clean_failure(cli("finetune", "-m", "no-such-model", "-d", "digits", "-o", out, "--steps", "1"),
                         "unknown model 'no-such-model'")
    assert_clean_failure(cli("finetune", "-m", TINY, "-d", "digits", "-o", out, "--lr", ""), "no points", "--lr")
    assert_clean_failure(cli("finetune", "-m", TINY, "-d", str(tmp_path / "nowhere"), "-o", out, "--steps", "1"),
                         "nowhere", "does not exist")
    other = tmp_path / "other.safetensors"
    from negmerge_cli.clip import models

    models.save_checkpoint(models.create_model("negmerge-tiny-16"), other, {"format": "pt"})
    assert_clean_failure(cli("finetune", *COMMON, "-o", out, "-p", other), str(other), "does not fit model negmerge-tiny")
    assert not out.exists()


def test_grid_expansion_names_and_selection():
    from negmerge_cli.core.errors import UsageError
    from negmerge_cli.stages import FinetuneOptions, Grid, plan
    from negmerge_cli.training.sweep import PAPER_RANDAUG

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


# --- per-point seeds and frozen parameters ----------------------------------------------------------

RELEASE_FROZEN = "visual.transformer.resblocks.*.attn.*"


def _own_seed(name: str) -> int:
    """The documented formula, written out independently: SHA-256 of the point's name, first 4 bytes."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 2**31


def _points(folder: Path) -> dict:
    return {p["name"]: p for p in json.loads((folder / "manifest.json").read_text())["points"]}


def _metadata(path: Path) -> dict:
    with safe_open(path, "pt") as handle:
        return handle.metadata()


def test_point_jobs_train_exactly_as_a_whole_sweep_with_their_own_seeds(sweep, tmp_path, monkeypatch):
    jobs, _, _ = sweep  # each point trained by its own --point job
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the jobs ran: CPU kernels then sum in the same order
    whole = tmp_path / "whole"
    result = finetune("-o", whole, *GRID, "-q")  # both points, one after the other, in one process
    assert result.returncode == 0, result.stderr
    seeds = {name: point["hyperparameters"]["train_seed"] for name, point in _points(whole).items()}
    assert seeds == {name: _own_seed(name) for name in NAMES} and len(set(seeds.values())) == 2
    assert {n: p["hyperparameters"]["train_seed"] for n, p in _points(jobs).items()} == seeds
    assert json.loads((whole / "sweep.json").read_text())["identity"]["seed_mode"] == "per-point"
    for name in NAMES:
        alone, together = load_file(jobs / f"{name}.safetensors"), load_file(whole / f"{name}.safetensors")
        assert all(torch.equal(alone[k], together[k]) for k in alone), name  # bit for bit
        metadata = _metadata(whole / f"{name}.safetensors")
        assert json.loads(metadata["negmerge.hyperparameters"])["train_seed"] == seeds[name]
        assert metadata["negmerge.seed_mode"] == "per-point" and json.loads(metadata["negmerge.freeze"]) == []

    # --seed-mode shared: the --seed value itself for every point, so other weights
    shared = tmp_path / "shared"
    assert finetune("-o", shared, *GRID, "--point", "1", "--seed-mode", "shared", "-q").returncode == 0
    assert _points(shared)[NAMES[1]]["hyperparameters"]["train_seed"] == 0
    assert _metadata(shared / f"{NAMES[1]}.safetensors")["negmerge.seed_mode"] == "shared"
    ours, theirs = load_file(shared / f"{NAMES[1]}.safetensors"), load_file(jobs / f"{NAMES[1]}.safetensors")
    assert not torch.equal(ours["visual.proj"], theirs["visual.proj"])


def test_per_point_seeds_depend_on_the_point_alone():
    from negmerge_cli.training.sweep import Grid, expand_grid

    big = expand_grid(Grid(wd=[0.1], lr=[1e-5, 1e-4], steps=[5], seed=[0, 7], randaug=["none", "rand-m1-n1-mstd0.5"]))
    small = expand_grid(Grid(wd=[0.1], lr=[1e-4], steps=[5], seed=[7], randaug=["rand-m1-n1-mstd0.5"]))
    assert small[0].train_seed == next(p.train_seed for p in big if p.name == small[0].name)
    assert small[0].train_seed == _own_seed("lr0.0001_st5_wd0.1_ls0_seed7_rand-m1-n1-mstd0.5")
    assert len({p.train_seed for p in big}) == len(big) and all(0 <= p.train_seed < 2**31 for p in big)
    shared = expand_grid(Grid(wd=[0.1], lr=[1e-5, 1e-4], steps=[5], seed=[0, 7]), seed_mode="shared")
    assert [p.train_seed for p in shared] == [p.seed for p in shared] == [0, 7, 0, 7]
    assert [p.name for p in shared] == [p.name for p in expand_grid(Grid(wd=[0.1], lr=[1e-5, 1e-4], steps=[5], seed=[0, 7]))]


def test_resuming_with_other_seed_or_freeze_settings_is_refused(sweep, tmp_path, cli):
    import shutil

    out, _, _ = sweep
    before = sorted(p.name for p in out.iterdir())
    assert_clean_failure(cli("finetune", *COMMON, "-o", out, *GRID, "--seed-mode", "shared"), str(out), "different sweep",
                         "seed_mode is 'per-point' there, 'shared' here")
    assert_clean_failure(cli("finetune", *COMMON, "-o", out, *GRID, "--freeze", RELEASE_FROZEN), str(out), "different sweep",
                         "freeze is [] there")
    assert sorted(p.name for p in out.iterdir()) == before

    # a sweep written before these settings existed trained one seed for all points and froze nothing
    old = tmp_path / "old"
    shutil.copytree(out, old)
    sweep_json = json.loads((old / "sweep.json").read_text())
    del sweep_json["identity"]["seed_mode"], sweep_json["identity"]["freeze"]
    (old / "sweep.json").write_text(json.dumps(sweep_json))
    assert_clean_failure(cli("finetune", *COMMON, "-o", old, *GRID), "seed_mode is 'shared' there, 'per-point' here")
    resumed = finetune("-o", old, *GRID, "--seed-mode", "shared", run=cli)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skip {NAMES[0]}" in resumed.stderr and f"skip {NAMES[1]}" in resumed.stderr


def test_frozen_parameters_stay_at_the_base_and_their_task_vector_is_zero(tmp_path, cli):
    out = tmp_path / "frozen"
    globs = ["--freeze", RELEASE_FROZEN, "--freeze", "visual.conv1.weight"]
    result = finetune("-o", out, *globs, "-q", run=cli)
    assert result.returncode == 0, result.stderr
    checkpoint = out / f"{NAMES[0]}.safetensors"
    tau = tmp_path / "tau.safetensors"
    assert cli("vector", "-b", out / "base.safetensors", "-o", tau, checkpoint, "-q").returncode == 0

    import fnmatch

    vector, base = load_file(tau), load_file(out / "base.safetensors")
    with safe_open(str(tau), "pt") as handle:
        omitted = set(json.loads(handle.metadata().get("negmerge.zero_tensors", "{}")))
    frozen = {k for k in base if k.startswith("visual.") and
              (fnmatch.fnmatchcase(k, RELEASE_FROZEN) or k == "visual.conv1.weight")}
    assert len(frozen) == 2 * 4 + 1  # 2 blocks x in_proj weight/bias, out_proj weight/bias; conv1
    # exactly zero (no step, no weight decay): left out of the vector as all-zero tensors
    assert frozen <= omitted and not frozen & set(vector)
    assert all(vector[k].any() for k in base if k.startswith("visual.") and k not in frozen)
    assert all(not vector[k].any() for k in base if not k.startswith("visual.") and k in vector)

    point = _points(out)[NAMES[0]]
    assert point["train"]["frozen_tensors"] == len(frozen)
    assert point["train"]["frozen_parameters"] == sum(base[k].numel() for k in frozen)
    visual = sum(v.numel() for k, v in base.items() if k.startswith("visual.") and v.is_floating_point())
    assert point["train"]["trained_parameters"] == visual - point["train"]["frozen_parameters"]
    expected = sorted([RELEASE_FROZEN, "visual.conv1.weight"])
    assert json.loads((out / "sweep.json").read_text())["identity"]["freeze"] == expected
    metadata = _metadata(checkpoint)
    assert json.loads(metadata["negmerge.freeze"]) == expected
    assert int(metadata["negmerge.frozen_parameters"]) == point["train"]["frozen_parameters"]
    # the same globs in another order are the same sweep: the finished point is skipped
    again = finetune("-o", out, "--freeze", "visual.conv1.weight", "--freeze", RELEASE_FROZEN, run=cli)
    assert again.returncode == 0 and f"skip {NAMES[0]}" in again.stderr, again.stderr


def test_release_attention_is_a_third_of_the_vit_b_32_image_encoder():
    from negmerge_cli.clip import freeze

    sizes = freeze.encoder_sizes("ViT-B-32")  # a meta-device skeleton: no weights, no download
    frozen = freeze.select(sizes, [freeze.RELEASE_FROZEN])
    assert len(frozen) == 12 * 4
    assert (sum(sizes[k] for k in frozen), sum(sizes.values())) == (28_348_416, 87_849_216)


def test_bad_seed_and_freeze_options_fail_cleanly_and_write_nothing(tmp_path, cli):
    out = tmp_path / "never"
    args = ["finetune", "-m", TINY, "-d", "digits", "-o", out, "--steps", "1"]
    for extra, fragments in (
        (["--freeze", "visual.transformer.resblocks.*.atn.*"], ["--freeze", "'visual.transformer.resblocks.*.atn.*'",
                                                                 "matches no trainable parameter"]),
        (["--freeze", "transformer.*"], ["--freeze", "'transformer.*'", "matches no trainable parameter"]),
        (["--freeze", "visual.*.weight", "--freeze", "visual.*"], ["--freeze", "every parameter", "nothing would train"]),
        (["--seed-mode", "each"], ["--seed-mode", "'each'", "per-point, shared"]),
        (["--seed", "-1"], ["--seed -1", "must be in [0, 2147483648)"]),
    ):
        assert_clean_failure(cli(*args, *extra), *fragments)
    assert not out.exists()


def test_a_run_whose_loss_turns_nan_fails_without_reading_the_loss_every_step(tmp_path):
    """The loss is read every LOSS_READ_STEPS steps (each read waits for the GPU), yet a NaN from
    the second step on still fails the run, at the next read, in one line naming that step."""
    from clip_helpers import make_image_folder

    from negmerge_cli.clip import datasets, models, train
    from negmerge_cli.core.errors import NegmergeError
    from negmerge_cli.training.distributed import Ranks

    model = models.create_model(TINY)
    data = datasets.load_dataset(str(make_image_folder(tmp_path / "shapes", per_class=4, size=32)), "train")
    data = data.with_transform(models.transforms_for(model, train=False))
    head = torch.randn(3, model.text_projection.shape[1])
    steps = []

    def poison_after_the_first_step(module, inputs):  # one forward a step: every feature NaN from step 2 on
        steps.append(len(steps))
        if len(steps) == 2:
            with torch.no_grad():
                model.visual.proj.fill_(float("nan"))

    model.visual.register_forward_pre_hook(poison_after_the_first_step)
    settings = train.TrainSettings(lr=1e-5, wd=0.1, label_smoothing=0.0, seed=0, steps=train.LOSS_READ_STEPS + 5,
                                   batch_size=2, warmup_steps=0, workers=0)
    with pytest.raises(NegmergeError, match=rf"point: training diverged \(a loss was NaN or Inf by step "
                                            rf"{train.LOSS_READ_STEPS + 1}, the last nan\)"):
        train.train_image_encoder(model, head, data, settings, torch.device("cpu"), Ranks(), description="point")
