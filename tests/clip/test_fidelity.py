"""Paper fidelity of the CLIP path: QuickGELU, precision and the retain bar's base,
through the real CLI on CPU with tiny models."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from clip_helpers import TINY, make_image_folder
from helpers import assert_clean_failure, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from negmerge_cli.clip import models

pytestmark = pytest.mark.slow
FINETUNE = ["finetune", "-m", TINY, "-d", "digits", "--steps", "4", "-b", "32", "-j", "0", "--lr", "2e-3", "-q"]


def metadata(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def eval_json(cli, *args) -> dict:
    result = cli("eval", "-m", TINY, "-d", "digits", "-j", "0", "-q", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


# -- QuickGELU -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_gelu_sweep(tmp_path_factory):
    """A sweep trained with QuickGELU (forced: the tiny config's own activation is GELU)."""
    out = tmp_path_factory.mktemp("quickgelu") / "sweep"
    result = run_cli(*FINETUNE, "--quick-gelu", "-o", out)
    assert result.returncode == 0, result.stderr
    (point,) = [p for p in out.glob("*.safetensors") if p.name != "base.safetensors"]
    return out, point


def test_finetune_records_the_activation_it_trained_with(quick_gelu_sweep):
    out, point = quick_gelu_sweep
    assert metadata(out / "base.safetensors")["negmerge.quick_gelu"] == "true"
    assert metadata(point)["negmerge.quick_gelu"] == "true"
    assert json.loads((out / "manifest.json").read_text())["identity"]["quick_gelu"] is True


def test_a_finetuned_checkpoint_is_evaluated_with_the_activation_it_was_trained_with(quick_gelu_sweep, cli):
    """The checkpoint's predictions differ between GELU and QuickGELU; a later eval that rebuilt the
    bare config (GELU) would give the --no-quick-gelu numbers."""
    _, point = quick_gelu_sweep
    default, quick, plain = (eval_json(cli, "-c", point, *flag) for flag in ([], ["--quick-gelu"], ["--no-quick-gelu"]))
    assert quick["metrics"] != plain["metrics"], "precondition: the activation must change the predictions"
    assert default["metrics"] == quick["metrics"]
    assert (default["quick_gelu"], quick["quick_gelu"], plain["quick_gelu"]) == (True, True, False)


def test_random_init_keeps_the_configs_activation(tmp_path, cli):
    out = tmp_path / "sweep"
    assert cli(*FINETUNE, "--steps", "1", "-o", out).returncode == 0
    assert metadata(out / "base.safetensors")["negmerge.quick_gelu"] == "false"


def test_resuming_a_sweep_with_another_activation_is_refused(quick_gelu_sweep, cli):
    out, _ = quick_gelu_sweep
    assert_clean_failure(cli(*FINETUNE, "--no-quick-gelu", "-o", out), str(out))


@pytest.fixture(scope="module")
def openai_hub(tmp_path_factory):
    """An offline Hugging Face hub cache holding stand-in weights for open_clip's ViT-B-32 'openai'
    tag (random, same shapes), where open_clip looks for them."""
    import open_clip

    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--timm--vit_base_patch32_clip_224.openai"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


def test_openai_weights_get_quick_gelu_from_the_tag(openai_hub, tmp_path):
    """open_clip >= 2.29 builds GELU for ViT-B-32 + openai; the tag's flag says QuickGELU."""
    images = make_image_folder(tmp_path / "shapes", per_class=2, size=32)
    command = [sys.executable, "-m", "negmerge_cli", "eval", "-m", "ViT-B-32", "-p", "openai", "-d", str(images),
               "-j", "0", "-q"]
    import subprocess

    result = subprocess.run(command, capture_output=True, text=True, env=openai_hub, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["quick_gelu"] is True
    assert models.needs_quick_gelu("ViT-B-32", "openai") and not models.needs_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")


# -- precision -------------------------------------------------------------------------------------


def test_finetune_defaults_to_float32_and_records_the_precision(tmp_path, cli):
    runs = {}
    for name, flags in {"default": [], "fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"]}.items():
        out = tmp_path / name
        result = cli(*FINETUNE, *flags, "-o", out)
        assert result.returncode == 0, result.stderr
        (point,) = [p for p in out.glob("*.safetensors") if p.name != "base.safetensors"]
        assert metadata(point)["negmerge.precision"] == (name if name != "default" else "fp32")
        assert json.loads((out / "manifest.json").read_text())["identity"]["precision"] == metadata(point)["negmerge.precision"]
        runs[name] = load_file(str(point))
    assert all(torch.equal(runs["default"][k], runs["fp32"][k]) for k in runs["fp32"])
    assert any(not torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in runs["fp32"])  # autocast really ran


def test_eval_records_the_precision_and_refuses_unknown_ones(quick_gelu_sweep, cli):
    _, point = quick_gelu_sweep
    assert eval_json(cli, "-c", point)["precision"] == "fp32"
    assert eval_json(cli, "-c", point, "--precision", "bf16")["precision"] == "bf16"
    assert_clean_failure(cli("eval", "-m", TINY, "-c", point, "-d", "digits", "--precision", "fp8"),
                         "--precision", "fp8")


# -- the retain bar's base -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("base_retain")
    model = models.create_model(TINY)
    models.save_checkpoint(model, root / "base.safetensors", {})
    generator = torch.Generator().manual_seed(0)
    tau = {k: 0.3 * torch.randn(v.shape, generator=generator) if k.startswith("visual.") else torch.zeros_like(v)
           for k, v in models.state_dict_for_saving(model).items() if v.is_floating_point()}
    save_file(tau, str(root / "tau.safetensors"))
    make_image_folder(root / "forget", per_class=8, seed=1)
    make_image_folder(root / "retain", per_class=8, seed=2)
    return root


def search_args(files, *extra, out=None) -> list:
    return ["eval", "-m", TINY, "-c", files / "base.safetensors", "--vector", files / "tau.safetensors",
            "--forget", files / "forget", "--retain", files / "retain", "--coefs", "0:1:6", "-j", "0",
            "--json", out or files / "bad.json", "-q", *extra]


def search(cli, files, *extra):
    out = files / f"search{len(list(files.glob('search*.json')))}.json"
    result = cli(*search_args(files, *extra, out=out))
    return result, (json.loads(out.read_text()) if out.exists() else None)


def paper_choice(points, base_retain, threshold=0.95):
    """The rule, written out: lowest forget among points at or above the bar, ties to the smallest lambda."""
    passing = [p for p in sorted(points, key=lambda p: p["coef"]) if p["retain_acc1"] >= threshold * base_retain]
    return min(passing, key=lambda p: p["forget_acc1"])["coef"] if passing else None


def test_base_retain_from_a_number_or_stored_accuracies(search_files, tmp_path, cli):
    _, evaluated = search(cli, search_files)
    assert evaluated["base_retain_source"].startswith("evaluated")
    assert evaluated["base_retain_acc1"] == evaluated["base"]["retain_acc1"]

    stored = tmp_path / "zeroshot_accuracies.json"  # the released code's format
    stored.write_text(json.dumps({"ImageNetVal": 0.5, "CarsVal": 0.9}))
    ours = tmp_path / "eval.json"  # this tool's eval --json of the base on the retain set
    ours.write_text(json.dumps([{"dataset": evaluated["retain"], "metrics": {"acc1": 0.25, "acc5": 1.0}}]))
    choices = {}
    for flag, expected in (("0.8", 0.8), (f"{stored}:ImageNetVal", 0.5), (str(ours), 0.25)):
        result, found = search(cli, search_files, "--base-retain", flag)
        assert found is not None, result.stderr
        assert found["base_retain_acc1"] == expected and found["base_retain_source"] == flag
        assert found["retain_limit"] == pytest.approx(0.95 * expected, abs=0, rel=1e-15)
        assert found["points"] == evaluated["points"]  # the same evaluations, another bar
        chosen = choices[expected] = found["chosen"]["coef"] if found["chosen"] else None
        assert chosen == paper_choice(found["points"], expected)
        if chosen is None:  # no lambda keeps the bar: said in one line, exit 1
            assert_clean_failure(result, "no lambda")
        else:
            assert result.returncode == 0 and result.stdout.strip() == f"{chosen:g}"
    assert choices[0.8] is None and choices[0.25] is not None, "precondition: the stored base moves the choice"


@pytest.mark.parametrize("value, fragments", [
    ("66.66", ["--base-retain", "fraction"]),
    ("nan", ["--base-retain"]),
    ("missing.json", ["--base-retain", "missing.json"]),
])
def test_bad_base_retain_is_refused_before_evaluating(search_files, value, fragments, cli):
    assert_clean_failure(cli(*search_args(search_files, "--base-retain", value)), *fragments)
    assert not list(search_files.glob("bad*.json"))


def test_base_retain_needs_a_key_when_the_file_holds_several(search_files, tmp_path, cli):
    stored = tmp_path / "zeroshot_accuracies.json"
    stored.write_text(json.dumps({"ImageNetVal": 0.5, "CarsVal": 0.9}))
    assert_clean_failure(cli(*search_args(search_files, "--base-retain", stored)), str(stored), "ImageNetVal")
    assert_clean_failure(cli(*search_args(search_files, "--base-retain", f"{stored}:SUN397Val")), "SUN397Val")


def test_base_retain_belongs_to_the_search(search_files, cli):
    result = cli("eval", "-m", TINY, "-c", search_files / "base.safetensors", "-d", "digits", "--base-retain", "0.5")
    assert_clean_failure(result, "--base-retain", "--vector")


def test_apply_carries_the_bases_activation_to_the_unlearned_checkpoint(quick_gelu_sweep, tmp_path, cli):
    out, point = quick_gelu_sweep
    vector, unlearned = tmp_path / "tau.safetensors", tmp_path / "unlearned.safetensors"
    assert cli("vector", "-b", out / "base.safetensors", "-o", vector, point, "-q").returncode == 0
    result = cli("apply", "-b", out / "base.safetensors", "-v", vector, "-s", "-0.5", "-o", unlearned, "-q")
    assert result.returncode == 0, result.stderr
    assert metadata(unlearned)["negmerge.quick_gelu"] == "true"
    assert eval_json(cli, "-c", unlearned)["quick_gelu"] is True


def test_convert_records_the_activation_of_its_pretrained_model(quick_gelu_sweep, tmp_path, cli):
    out, point = quick_gelu_sweep
    cases = {"from_base": ["-p", out / "base.safetensors"], "config": [], "forced": ["--quick-gelu"]}
    for name, flags in cases.items():
        target = tmp_path / f"{name}.safetensors"
        result = cli("convert", point, "-o", target, "-m", TINY, "-q", *flags)
        assert result.returncode == 0, result.stderr
        cases[name] = metadata(target)["negmerge.quick_gelu"]
    assert cases == {"from_base": "true", "config": "false", "forced": "true"}
