"""``negmerge eval`` for classifiers through the real CLI: the unlearning metrics of a tiny
checkpoint, the Avg. Gap to a reference, the lambda search, and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_clean_failure, run_cli

MODEL = "resnet8-cifar"


def _train(model, dataset, indices, steps: int, seed: int):
    """A few real SGD steps (the test's own setup: the checkpoints need to differ meaningfully)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = dataset.labels
    indices = torch.tensor(indices)
    model.train()
    for _ in range(steps):
        batch = indices[torch.randint(len(indices), (64,), generator=generator)]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from negmerge_cli.checkpoint import save_state_dict
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.models import architecture_metadata, create_classifier
    from negmerge_cli.classifier.split import make_forget_split
    from negmerge_cli.core import files

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("classifier_eval")
    data = open_classifier_data("digits")
    split = make_forget_split(data, classes=[3])
    paths = {name: root / f"{name}.safetensors" for name in ("original", "retrain", "finetuned")}
    metadata = architecture_metadata(MODEL, 10)
    with files.operation():
        split.save(root / "forget.json")
        train = data.train_eval_view()
        original = _train(create_classifier(MODEL, 10), train, range(len(train)), 40, 0)
        save_state_dict(original.state_dict(), paths["original"], metadata)
        retrain = _train(create_classifier(MODEL, 10), train, split.retain_indices, 40, 1)
        save_state_dict(retrain.state_dict(), paths["retrain"], metadata)
        finetuned = _train(original, train, split.forget_indices, 5, 2)
        save_state_dict(finetuned.state_dict(), paths["finetuned"], metadata)
    from negmerge_cli.stages import make_vector

    make_vector(paths["original"], paths["finetuned"], root / "tau.safetensors")
    return root, paths, split


def _eval(setup, *extra, run=run_cli):
    root, paths, _ = setup
    return run("eval", "-m", MODEL, "--num-classes", 10, "-c", paths["original"], "--data", "digits",
                   "--forget-split", root / "forget.json", "--device", "cpu", "-j", "0", *extra)


@pytest.mark.slow
def test_eval_metrics_and_gap_through_the_cli(setup, cli):
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.metrics import accuracy, predictions_from_logits
    from negmerge_cli.classifier.models import load_classifier

    root, paths, split = setup
    out, reference_json = root / "original.json", root / "retrain.json"
    first = cli("eval", "-m", MODEL, "-c", paths["retrain"], "--data", "digits", "--forget-split",
                    root / "forget.json", "--json", reference_json, "-j", "0", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    result = _eval(setup, "--reference", paths["retrain"], "--json", out)
    assert result.returncode == 0, result.stderr
    found = json.loads(out.read_text())
    assert found["task"] == "classifier_unlearning_eval"
    assert found["counts"] == {"dr": len(split.retain_indices), "df": len(split.forget_indices), "dtest": 359,
                               "shadow_members": 359}

    # accuracies against a direct computation with the same weights
    data = open_classifier_data("digits")
    model = load_classifier(MODEL, 10, paths["original"], "cpu")
    train, test_set = data.train_eval_view(), data.test
    forget_images = torch.stack([train[i][0] for i in split.forget_indices])
    test_images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    model.eval()
    with torch.no_grad():
        forget = predictions_from_logits(model(forget_images), train.labels[list(split.forget_indices)])
        test = predictions_from_logits(model(test_images), test_set.labels)
    assert found["metrics"]["df_acc"] == accuracy(forget)
    assert found["metrics"]["dtest_acc"] == accuracy(test)

    # the Avg. Gap by hand, and the same reference read from its eval JSON
    ours, theirs = found["metrics"], json.loads(reference_json.read_text())["metrics"]
    by_hand = sum(abs(100 * ours[k] - 100 * theirs[k]) for k in ours) / 4
    assert found["avg_gap_points"] == pytest.approx(by_hand, abs=1e-5)
    assert theirs["df_acc"] == 0.0  # the retrained model never saw a 3
    from_json = _eval(setup, "--reference", reference_json, run=cli)
    assert from_json.returncode == 0, from_json.stderr
    assert json.loads(from_json.stdout)["avg_gap_points"] == found["avg_gap_points"]


def test_lambda_search_prints_lambda_alone(setup, cli):
    root, paths, _ = setup
    out = root / "search.json"
    result = _eval(setup, "--vector", root / "tau.safetensors", "--coefs", "0,0.5,1,2", "--select", "gap",
                   "--reference", paths["retrain"], "--json", out, "-q", run=cli)
    assert result.returncode == 0, result.stderr
    search = json.loads(out.read_text())
    gaps = {p["coef"]: p["avg_gap_points"] for p in search["points"]}
    assert float(result.stdout.strip()) == min(gaps, key=lambda c: (gaps[c], c))
    assert search["chosen"]["coef"] == float(result.stdout)
    assert search["oracle"] is True and search["rule"].startswith("oracle:")  # gap reads the retrained model
    bar = _eval(setup, "--vector", root / "tau.safetensors", "--coefs", "0,0.5,1,2", "-q", run=cli)
    assert bar.returncode == 0, bar.stderr
    assert float(bar.stdout.strip()) in gaps


def test_the_default_search_is_honest_and_says_what_it_read(setup, cli):
    """Without --select: retain-bar, no oracle marker, the metrics it read, and the grid's end flagged
    (a warning and the JSON) exactly when the chosen lambda is the largest; with gap, the table says ORACLE."""
    root, paths, _ = setup
    out = root / "honest.json"
    result = _eval(setup, "--vector", root / "tau.safetensors", "--coefs", "0,0.5,1,2", "--json", out, "-f", run=cli)
    assert result.returncode == 0, result.stderr
    search = json.loads(out.read_text())
    assert search["select"] == "retain-bar" and search["oracle"] is False and search["reads"] == ["dr_acc", "df_acc"]
    assert search["reference"] is None and "ORACLE" not in result.stderr and "reads Dr and Df only" in result.stderr
    at_end = search["chosen"]["coef"] == 2.0
    assert search["chosen_at_grid_end"] is at_end
    assert ("grid's last point" in result.stderr) is at_end and ("0:4:7" in result.stderr) is at_end
    oracle = _eval(setup, "--vector", root / "tau.safetensors", "--coefs", "0,1", "--select", "gap",
                   "--reference", paths["retrain"], run=cli)
    assert oracle.returncode == 0, oracle.stderr
    assert "ORACLE" in oracle.stderr and "lambda chosen by the oracle" in oracle.stderr


def test_bad_inputs_fail_cleanly(setup, tmp_path, cli):
    root, paths, _ = setup
    out = tmp_path / "out.json"
    assert_clean_failure(_eval(setup, "--num-classes", 100, "--json", out, run=cli), "--num-classes 100", "10 classes")
    assert_clean_failure(_eval(setup, "--select", "gap", "--vector", root / "tau.safetensors", run=cli), "--reference")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads((root / "forget.json").read_text()),
                                 "dataset": {**json.loads((root / "forget.json").read_text())["dataset"], "dataset": "cifar10",
                                             "n_train": 50000}}))
    assert_clean_failure(cli("eval", "-m", MODEL, "-c", paths["original"], "--data", "digits", "--forget-split",
                             other, "--json", out), "another dataset", "cifar10")
    assert_clean_failure(_eval(setup, "--reference", other, "--json", out, run=cli), "not a classifier eval JSON")
    assert_clean_failure(_eval(setup, "--forget", "digits", run=cli), "--forget", "CLIP")
    assert_clean_failure(cli("eval", "-m", MODEL, "-c", paths["original"], "--data", "digits"), "--forget-split")
    assert not out.exists()


def test_class_count_mismatch_names_the_tensor(setup, tmp_path, cli):
    from negmerge_cli.checkpoint import save_state_dict
    from negmerge_cli.classifier.models import create_classifier
    from negmerge_cli.core import files

    root, _, _ = setup
    wide = tmp_path / "wide.safetensors"
    with files.operation():
        save_state_dict(create_classifier(MODEL, 100).state_dict(), wide)
    assert_clean_failure(cli("eval", "-m", MODEL, "-c", wide, "--data", "digits", "--forget-split",
                                 root / "forget.json"), "wide.safetensors", "fc.weight has 100 rows")


def test_report_reads_the_classifier_eval_json(setup, cli, tmp_path):
    root, paths, _ = setup
    out = tmp_path / "negmerge.json"
    assert _eval(setup, "--reference", paths["retrain"], "--json", out, "-q", run=cli).returncode == 0
    found = json.loads(out.read_text())
    table = cli("report", out)
    assert table.returncode == 0, table.stderr
    assert "Dtest %" in table.stdout and "MIA-efficacy %" in table.stdout and "Avg. Gap" in table.stdout
    assert f"{found['avg_gap_points']:.2f}" in table.stdout
    assert f"{100 * found['metrics']['df_acc']:.2f}" in table.stdout

    # --published: the classifier literature's figures (not CLIP's) beside ours, in every format
    published = cli("report", out, "--published")
    assert published.returncode == 0, published.stderr
    assert "Published (ResNet-18, CIFAR-10, 10% random forgetting)" in published.stdout
    assert "| SalUn\u2021 | 99.62 | 97.15 | 93.93 | 14.39 | 1.15 | [1] |" in published.stdout  # transcribed, marked
    assert "| NegMerge\u2020 | - | - | - | - | 1.07 |" in published.stdout and "secondary sources" in published.stdout
    assert "ViT-B/32" not in published.stdout and "Avg Df" not in published.stdout
    rows = json.loads(cli("report", out, "--published", "--format", "json").stdout)["published"]["rows"]
    assert {r["method"]: r["avg_gap_points"] for r in rows}["retrain"] == 0.0
    csv_lines = cli("report", out, "--published", "--format", "csv").stdout.splitlines()
    assert any(line.startswith("published,random_labels,cifar10,test,,0.9239,0.9967,,,,0.9283,0.3736,7.15,")
               for line in csv_lines)
