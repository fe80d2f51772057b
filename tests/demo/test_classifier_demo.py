"""``negmerge demo --scenario classifier --quick`` end to end (real training, merging, search)."""

from __future__ import annotations

import json

import pytest
from helpers import assert_clean_failure


@pytest.mark.slow
def test_quick_classifier_demo_unlearns_the_forgotten_class(cli, tmp_path):
    work = tmp_path / "demo"
    result = cli("demo", "--scenario", "classifier", "--quick", "-w", work)
    assert result.returncode == 0, result.stderr
    results = json.loads((work / "results.json").read_text())
    rows = results["rows"]
    assert set(rows) == {"original", "retrain", "negmerge", "mean", "ties", "magmax", "best_single"}
    assert (work / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    original, retrain, negmerge = rows["original"], rows["retrain"], rows["negmerge"]
    assert original["df_acc"] > 0.9 and retrain["df_acc"] < 0.05  # the retrained model never saw a 3
    # real unlearning: Df accuracy falls well below the original's, toward the retrained model's
    assert negmerge["df_acc"] < original["df_acc"] - 0.5
    assert negmerge["avg_gap_points"] < original["avg_gap_points"] / 2
    assert negmerge["dr_acc"] >= 0.95 * original["dr_acc"]  # the retain-bar rule held
    search = json.loads((work / "search" / "negmerge.json").read_text())
    assert search["chosen"]["coef"] == negmerge["lambda"]


def test_unknown_scenario_fails_cleanly(cli, tmp_path):
    assert_clean_failure(cli("demo", "--scenario", "vision", "-w", tmp_path / "d"), "--scenario", "'vision'")
