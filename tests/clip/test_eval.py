"""End to end: ``negmerge eval`` (zero-shot accuracy, coefficient search) through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch
from clip_helpers import TINY, make_image_folder
from helpers import assert_clean_failure, run_cli
from PIL import Image
from safetensors.torch import save_file

from negmerge_cli.clip import models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny base checkpoint, a task vector touching only the image encoder, an image folder."""
    root = tmp_path_factory.mktemp("eval")
    model = models.create_model(TINY)
    models.save_checkpoint(model, root / "base.safetensors", {"format": "pt"})
    generator = torch.Generator().manual_seed(0)
    tau = {k: (0.5 * torch.randn(v.shape, generator=generator) if k.startswith("visual.") else torch.zeros_like(v))
           for k, v in models.state_dict_for_saving(model).items() if v.is_floating_point()}
    save_file(tau, str(root / "tau.safetensors"))
    make_image_folder(root / "shapes", per_class=10)
    return root


def test_eval_writes_clip_benchmark_json_and_a_table(files, tmp_path, cli):
    result = cli("eval", "-m", TINY, "-c", files / "base.safetensors", "-d", "digits", "-d", files / "shapes",
                 "-j", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["dataset"] for r in rows] == ["digits:test", str(files / "shapes")]
    for row in rows:
        assert row["task"] == "zeroshot_classification" and row["model"] == TINY
        assert row["pretrained"] == str(files / "base.safetensors")
        assert set(row["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert all(0 <= v <= 1 for v in row["metrics"].values())
    assert [r["n_images"] for r in rows] == [359, 30]
    assert rows[1]["metrics"]["acc5"] == 1.0  # 3 classes: top-5 is top-3, always a hit
    assert "zero-shot classification" in result.stderr and "acc1 %" in result.stderr


def test_search_prints_lambda_alone_and_writes_every_point(files, tmp_path):
    report, plot = tmp_path / "search.json", tmp_path / "curve.png"
    result = run_cli("eval", "-m", TINY, "-c", files / "base.safetensors", "--vector", files / "tau.safetensors",
                     "--forget", "digits", "--retain", files / "shapes", "--coefs", "0:1:11", "--search", "compare",
                     "--json", report, "--plot", plot, "-j", "0")
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    grid = data["runs"]["grid"]
    assert len(grid["points"]) == 11 and [p["coef"] for p in grid["points"]][:3] == [0.0, 0.1, 0.2]
    assert data["forget"] == "digits:val" and data["retain"] == str(files / "shapes") + ":val"
    assert data["threshold"] == 0.95
    assert data["retain_limit"] == pytest.approx(0.95 * data["base"]["retain_acc1"])
    assert data["base"]["forget_acc1"] == grid["points"][0]["forget_acc1"]  # lambda 0 is the base
    # the grid's choice follows the rule over its points; stdout holds the (fast) choice alone
    feasible = [p for p in grid["points"] if p["retain_acc1"] >= data["retain_limit"]]
    best = min(feasible, key=lambda p: (p["forget_acc1"], p["coef"]))
    assert grid["chosen"]["coef"] == best["coef"]
    assert result.stdout.strip() == f"{data['chosen']['coef']:g}" and len(result.stdout.splitlines()) == 1
    assert data["runs"]["fast"]["n_points"] < 11 and "same_choice" in data["agreement"]
    assert data["n_evaluations"] == 11  # the fast run's points are reused by the grid run
    assert "built once" in data["heads"]
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_bad_eval_inputs_fail_cleanly(files, tmp_path, cli):
    base = files / "base.safetensors"
    out = tmp_path / "out.json"
    common = ["eval", "-m", TINY, "-c", base, "--json", out, "-j", "1"]
    assert_clean_failure(cli(*common, "-d", tmp_path / "missing"), "missing", "does not exist")
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    assert_clean_failure(cli(*common, "-d", tmp_path / "empty"), "empty", "no images found")
    broken = make_image_folder(tmp_path / "broken", per_class=3)
    (broken / "green_disc" / "001.png").write_bytes(b"\x89PNG but not really")
    assert_clean_failure(cli(*common, "-d", broken), "001.png", "cannot read image")
    other = tmp_path / "tiny16.safetensors"
    models.save_checkpoint(models.create_model("negmerge-tiny-16"), other, {"format": "pt"})
    assert_clean_failure(cli("eval", "-m", TINY, "-c", other, "-d", "digits", "--json", out),
                         str(other), "does not fit model negmerge-tiny")
    assert_clean_failure(cli("eval", "-m", "ViT-Q-99", "-c", base, "-d", "digits"), "unknown model 'ViT-Q-99'")
    assert not out.exists()


def test_json_and_plot_outputs_are_replaced_only_with_force(files, tmp_path, cli):
    out, plot = tmp_path / "result.json", tmp_path / "curve.png"
    plain = ["eval", "-m", TINY, "-c", files / "base.safetensors", "-d", files / "shapes", "-j", "0", "-q",
             "--json", out]
    search = ["eval", "-m", TINY, "-c", files / "base.safetensors", "--vector", files / "tau.safetensors",
              "--forget", files / "shapes", "--retain", files / "shapes", "--coefs", "0,1", "-j", "0", "-q",
              "--json", out, "--plot", plot]
    for args in (plain, search):
        out.write_text("keep")
        assert_clean_failure(cli(*args), str(out), "--force")
        assert out.read_text() == "keep"
        assert cli(*args, "--force").returncode in (0, 1)  # 1: no lambda chosen, results still written
        assert out.read_text() != "keep" and json.loads(out.read_text())
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_eval_records_class_folders_and_names_them_by_folder(files, tmp_path, cli):
    """eval's JSON says which name each class folder got, and a FOLDER<TAB>NAME file in any order
    gives the same accuracies as the names in label order."""
    shapes = files / "shapes"
    common = ["eval", "-m", TINY, "-c", files / "base.safetensors", "-d", shapes, "-j", "0"]
    in_order = tmp_path / "names.txt"
    in_order.write_text("stripes\ndisc\nsquare\n")
    by_folder = tmp_path / "names.tsv"
    by_folder.write_text("red_square\tsquare\ngreen_disc\tdisc\nblue_stripes\tstripes\n")
    plain, ordered, mapped = (cli(*common, *extra) for extra in ([], ["--classnames", in_order],
                                                                 ["--classnames", by_folder]))
    assert plain.returncode == ordered.returncode == mapped.returncode == 0, mapped.stderr
    rows = [json.loads(r.stdout)[0] for r in (plain, ordered, mapped)]
    assert rows[0]["classes"] == {"blue_stripes": "blue stripes", "green_disc": "green disc", "red_square": "red square"}
    assert rows[1]["classes"] == rows[2]["classes"] == {"blue_stripes": "stripes", "green_disc": "disc",
                                                        "red_square": "square"}
    assert rows[1]["metrics"] == rows[2]["metrics"]
    assert "class names (folder -> name): blue_stripes -> stripes, green_disc -> disc, red_square -> square" in mapped.stderr
    by_folder.write_text("red_square\tsquare\ngreen_disc\tdisc\n")
    assert_clean_failure(cli(*common, "--classnames", by_folder), "names.tsv", "does not name class folder(s) blue_stripes")
