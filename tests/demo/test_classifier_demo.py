"""``negmerge demo --scenario classifier --quick`` end to end (real training, merging, search), and
``negmerge report`` on every file of it: the demo folder, the classifier's eval and search JSON
(written by the library's evaluate and search_coefficient), and the reproduction layout."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil

import pytest
from helpers import assert_clean_failure, run_cli


@pytest.fixture(scope="module")
def classifier_demo(tmp_path_factory):
    """One quick classifier demo for every test of this module (its working folder)."""
    work = tmp_path_factory.mktemp("classifier-demo") / "demo"
    result = run_cli("demo", "--scenario", "classifier", "--quick", "-w", work, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


@pytest.mark.slow
def test_quick_classifier_demo_unlearns_the_forgotten_class(classifier_demo):
    work = classifier_demo
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


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_report_reads_the_classifier_demo_folder_in_every_format(classifier_demo, cli, tmp_path):
    work = classifier_demo
    rows = json.loads((work / "results.json").read_text())["rows"]
    markdown = cli("report", work)
    assert markdown.returncode == 0, markdown.stderr
    negmerge = rows["negmerge"]
    assert f"| NegMerge | {100 * negmerge['df_acc']:.2f} | {100 * negmerge['dr_acc']:.2f} |" in markdown.stdout
    assert f"| NegMerge | {100 * negmerge['dtest_acc']:.2f} | {100 * negmerge['mia_efficacy']:.2f} | " \
           f"{negmerge['avg_gap_points']:.2f} |" in markdown.stdout  # percent in Markdown only
    assert "Avg Df" not in markdown.stdout  # one dataset: no average repeating it

    table = _csv(cli("report", work, "--format", "csv").stdout)
    assert {r["setting"] for r in table} == {"paper", "oracle_gap"} and all(r["dataset"] == "digits" for r in table)
    line = next(r for r in table if (r["setting"], r["method"]) == ("paper", "negmerge"))
    for column, key in (("forget_acc1", "df_acc"), ("retain_acc1", "dr_acc"), ("dtest_acc", "dtest_acc"),
                        ("mia_efficacy", "mia_efficacy"), ("avg_gap_points", "avg_gap_points")):
        assert float(line[column]) == pytest.approx(negmerge[key], abs=5e-7), column  # fractions, as the JSON
    numbers = [v for r in table for v in r.values() if re.fullmatch(r"-?\d+\.\d+", v or "")]
    assert numbers and all(len(v.split(".")[1]) <= 6 for v in numbers)  # no float noise
    assert all(float(r["dtest_acc"]) <= 1 for r in table if r["dtest_acc"])

    data = json.loads(cli("report", work, "--format", "json").stdout)
    assert data["settings"] == ["paper", "oracle_gap"] and data["averages"] == []
    by_method = {r["method"]: r for r in data["rows"] if r["setting"] == "paper"}
    assert by_method["negmerge"]["metrics"]["dtest_acc"] == negmerge["dtest_acc"]
    assert by_method["negmerge"]["lambda"] == negmerge["lambda"] and by_method["original"]["lambda"] is None

    plot = tmp_path / "tradeoff.svg"
    done = cli("report", work, "--plot", plot, "-q")
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes().startswith(b"<?xml") and b"negmerge" in plot.read_bytes()


@pytest.mark.slow
def test_report_reads_classifier_eval_and_search_json(classifier_demo, cli, tmp_path):
    """The search alone (the metrics at its chosen lambda), the search with the eval of the model it
    chose (they complete each other), and --plot from the search's curve."""
    work = classifier_demo
    search_file, eval_file = work / "search" / "negmerge.json", work / "eval" / "negmerge.json"
    chosen = json.loads(search_file.read_text())["chosen"]
    alone = json.loads(cli("report", search_file, "--format", "json").stdout)["rows"]
    assert [(r["method"], r["split"], r["lambda"], r["forget_acc1"], r["retain_acc1"]) for r in alone] == [
        ("negmerge", "search", chosen["coef"], chosen["df_acc"], chosen["dr_acc"])]
    evaluation = json.loads(eval_file.read_text())
    both = json.loads(cli("report", search_file, eval_file, "--format", "json").stdout)["rows"]
    assert len(both) == 1 and both[0]["split"] == "test" and both[0]["lambda"] == chosen["coef"]
    assert both[0]["metrics"]["avg_gap_points"] == evaluation["avg_gap_points"]
    plot = tmp_path / "search.png"
    assert cli("report", search_file, "--plot", plot, "-q").returncode == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a damaged search names the file and the field
    broken = json.loads(search_file.read_text())
    broken["points"][0]["dr_acc"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    assert_clean_failure(cli("report", bad), "bad.json", "dr_acc")


@pytest.mark.slow
def test_non_zero_and_kept_are_the_same_figures_everywhere(classifier_demo, cli, tmp_path):
    """non-zero (of all float elements) is inspect's figure in merge's line, results.json and report;
    kept (of the elements the fine-tunes changed) only for the methods that drop elements, the same
    from the demo folder as from a reproduction layout of the same files."""
    work = classifier_demo
    rows = json.loads((work / "results.json").read_text())["rows"]
    inspected = json.loads(cli("inspect", work / "merged" / "negmerge.safetensors", "--json").stdout)
    assert rows["negmerge"]["nonzero_fraction"] == pytest.approx(inspected["nonzero_fraction"])
    vectors = sorted((work / "finetune").glob("lr*.safetensors"))
    merged = cli("merge", "-b", work / "finetune" / "base.safetensors", "-o", tmp_path / "n.safetensors", *vectors)
    assert merged.returncode == 0, merged.stderr
    assert f"non-zero {100 * inspected['nonzero_fraction']:.2f}% of float elements" in merged.stderr
    assert not re.search(r"\bkept\b", merged.stderr.rsplit(".safetensors:", 1)[1])  # merge says non-zero only
    assert rows["negmerge"]["kept_fraction"] == pytest.approx(
        rows["negmerge"]["nonzero_fraction"] / rows["mean"]["nonzero_fraction"])
    assert "kept_fraction" not in rows["mean"] and "kept_fraction" not in rows["magmax"]

    out = tmp_path / "out"  # the reproduction's OUT/<method>/{eval,inspect}.json
    for method in ("negmerge", "mean", "ties", "magmax"):
        (out / method).mkdir(parents=True)
        shutil.copy(work / "eval" / f"{method}.json", out / method / "eval.json")
        (out / method / "inspect.json").write_text(
            cli("inspect", work / "merged" / f"{method}.safetensors", "--json").stdout)
    from_layout = {r["method"]: r for r in json.loads(cli("report", out, "--format", "json").stdout)["rows"]}
    from_demo = {r["method"]: r for r in json.loads(cli("report", work, "--format", "json").stdout)["rows"]
                 if r["setting"] == "paper"}
    for method in ("negmerge", "ties"):
        assert from_layout[method]["kept_fraction"] == pytest.approx(from_demo[method]["kept_fraction"])
        assert from_layout[method]["nonzero_fraction"] == pytest.approx(from_demo[method]["nonzero_fraction"])
    assert from_layout["mean"]["kept_fraction"] is None and from_layout["magmax"]["kept_fraction"] is None
    text = cli("report", out).stdout
    assert f"(kept {100 * from_demo['negmerge']['kept_fraction']:.1f}%)" in text and "% kept" not in text


@pytest.mark.slow
def test_published_classifier_figures_say_they_are_another_setting(classifier_demo, cli):
    text = cli("report", classifier_demo, "--published").stdout
    assert "Published (ResNet-18, CIFAR-10, 10% random forgetting)" in text
    assert "Another setting than the rows above (resnet8-cifar on digits)" in text
    rows = _csv(cli("report", classifier_demo, "--published", "--format", "csv").stdout)
    salun = next(r for r in rows if r["setting"] == "published" and r["method"] == "salun")
    assert (salun["forget_acc1"], salun["dtest_acc"], salun["mia_efficacy"]) == ("0.9715", "0.9393", "0.1439")


def test_unknown_scenario_fails_cleanly(cli, tmp_path):
    assert_clean_failure(cli("demo", "--scenario", "vision", "-w", tmp_path / "d"), "--scenario", "'vision'")
