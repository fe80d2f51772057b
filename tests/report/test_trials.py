"""`negmerge report` over the classifier reproduction's trials (TRIALS=N: OUT/trial-K/METHOD/eval.json):
one row per method with the mean of every figure, its sample standard deviation and n, in every
format, checked against numpy; and the published classifier table with its sources, its Df-only
group and its marks."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from helpers import assert_clean_failure

# three trials of two methods: (dr_acc, df_acc, dtest_acc, mia_efficacy, avg_gap_points)
TRIALS = {"negmerge": [(0.9912, 0.9503, 0.9311, 0.1207, 1.13), (0.9861, 0.9420, 0.9254, 0.1530, 1.42),
                       (0.9733, 0.9655, 0.9358, 0.1102, 0.91)],
          "retrain": [(1.0, 0.9470, 0.9421, 0.1288, None), (1.0, 0.9512, 0.9390, 0.1301, None),
                      (0.9999, 0.9433, 0.9445, 0.1250, None)]}
METRICS = ("dr_acc", "df_acc", "dtest_acc", "mia_efficacy", "avg_gap_points")


def _write(root, trials=TRIALS):
    from negmerge_cli.results import ClassifierEvaluation, UnlearningMetrics

    paths = []
    for method, runs in trials.items():
        for k, (dr, df, dtest, mia, gap) in enumerate(runs, 1):
            evaluation = ClassifierEvaluation(
                model="resnet18-cifar", num_classes=10, checkpoint=f"trial-{k}/{method}.safetensors",
                checkpoint_sha256="0" * 64, forget_split={"file": "forget.json", "sha256": "1" * 64},
                data={"dataset": "cifar10", "root": "/data", "n_train": 50000, "n_test": 10000, "num_classes": 10,
                      "train_labels_sha256": "2" * 64},
                counts={"dr": 40500, "df": 4500, "dtest": 10000}, metrics=UnlearningMetrics(dr, df, dtest, mia),
                avg_gap=gap)
            path = root / f"trial-{k}" / method / "eval.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(evaluation.to_json()))
            paths.append(path)
    return paths


def _expected(method: str, metric: str):
    values = np.array([run[METRICS.index(metric)] for run in TRIALS[method]], dtype=np.float64)
    return values.mean(), values.std(ddof=1)


@pytest.fixture(scope="module")
def trial_files(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("trials") / "out")


def test_trials_average_to_numpys_mean_and_sample_std_in_every_format(trial_files, cli):
    done = cli("report", *trial_files, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {r["method"]: r for r in json.loads(done.stdout)["rows"]}
    assert set(rows) == {"negmerge", "retrain"}
    csv_rows = {r["method"]: r for r in csv.DictReader(io.StringIO(cli("report", *trial_files, "--format", "csv").stdout))}
    markdown = cli("report", *trial_files).stdout
    for method in TRIALS:
        row, line = rows[method], csv_rows[method]
        assert row["n_trials"] == 3 and line["n_trials"] == "3"
        values = {"dr_acc": row["retain_acc1"], "df_acc": row["forget_acc1"], **row["metrics"]}
        stds = {"dr_acc": row["std"]["retain_acc1"], "df_acc": row["std"]["forget_acc1"], **row["std"]}
        columns = {"dr_acc": "retain_acc1", "df_acc": "forget_acc1"}
        for metric in METRICS:
            if method == "retrain" and metric == "avg_gap_points":
                assert metric not in row["metrics"] and line[metric] == ""  # never measured: no mean, no std
                continue
            mean, std = _expected(method, metric)
            assert values[metric] == pytest.approx(mean, abs=1e-12) and stds[metric] == pytest.approx(std, abs=1e-12)
            column = columns.get(metric, metric)
            assert float(line[column]) == pytest.approx(mean, abs=1e-6)
            assert float(line[f"{column}_std"]) == pytest.approx(std, abs=1e-6)
        mean, std = _expected(method, "df_acc")
        assert f"{100 * mean:.2f} \u00b1 {100 * std:.2f}" in markdown
    gap_mean, gap_std = _expected("negmerge", "avg_gap_points")
    assert f"{gap_mean:.2f} \u00b1 {gap_std:.2f}" in markdown
    assert "sample standard deviation (n - 1" in markdown and "| Trials |" in markdown


def test_a_run_outside_the_trials_is_not_averaged_with_them(trial_files, tmp_path, cli):
    lone = _write(tmp_path / "lone", {"negmerge": TRIALS["negmerge"][:1]})[0]
    moved = tmp_path / "elsewhere" / "negmerge" / "eval.json"
    moved.parent.mkdir(parents=True)
    moved.write_text(lone.read_text())
    assert_clean_failure(cli("report", *trial_files, moved), "negmerge on cifar10", "trial-K", str(moved))
    # one trial given twice is one result twice, not two trials
    assert_clean_failure(cli("report", trial_files[0], trial_files[0]), "two results for negmerge")


def test_the_published_classifier_table_has_its_sources_and_its_df_only_rows(trial_files, cli):
    from negmerge_cli.report import published

    text = cli("report", *trial_files, "--published").stdout
    table = text[text.index("Published (ResNet-18"):]
    df_only = table[table.index("*unlearning with Df only*"):]
    for title in ("GA (gradient ascent)", "BS (boundary shrink)", "BE (boundary expanding)", "NegMerge\u2020",
                  "best single task vector\u2020", "uniform mean\u2020"):
        assert f"| {title}" in df_only, title
    assert "| SalUn\u2021 | 99.62 | 97.15 | 93.93 | 14.39 | 1.15 | [1] |" in table
    assert "arXiv 2310.12508" in table and "secondary sources" in table and "unverified" in table
    data = json.loads(cli("report", *trial_files, "--published", "--format", "json").stdout)["published"]
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["negmerge"]["status"] == published.SECONDARY and rows["negmerge"]["trains_on"] == "unlearning with Df only"
    assert rows["salun"]["df_acc"] == 0.9715 and rows["salun"]["source"].startswith("SalUn")
    # every transcribed row's Avg. Gap is the mean |x - Retrain's x| of its four figures (in points)
    retrain = published.CLASSIFIER["retrain"]
    for key, row in published.CLASSIFIER.items():
        if row.status == published.TRANSCRIBED:
            gaps = [abs(a - b) for a, b in zip((row.dr, row.df, row.dtest, row.mia),
                                               (retrain.dr, retrain.df, retrain.dtest, retrain.mia))]
            assert np.mean(gaps) == pytest.approx(row.avg_gap, abs=0.005), key


def test_the_batchnorm_row_is_titled_as_such(tmp_path, cli):
    """The reproduction's METHOD_bn folders (vectors with the BatchNorm running statistics) beside the default."""
    files = _write(tmp_path / "out", {"negmerge": TRIALS["negmerge"][:1], "negmerge_bn": TRIALS["negmerge"][1:2]})
    text = cli("report", *files).stdout
    assert "| NegMerge | " in text and "| NegMerge (BatchNorm statistics in the vectors) | " in text
    assert "`--buffers include`" in text and "| Trials |" in text  # one trial: n = 1, no std
    assert not [line for line in text.splitlines() if line.startswith("| NegMerge") and "\u00b1" in line]
