"""Honest lambda selection for classifiers (issue 21): the default rule reads only what an unlearner
holds (Dr, or the split's hold-out val, and Df), never Dtest, MIA-efficacy or the retrained model;
``gap`` is marked as the oracle in the JSON, the rule text and the table; a lambda at the grid's end
is flagged; the best single vector is picked by the same rule (library and the Makefile's script).
Hand-made curves only: no files beyond small JSONs, no models."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from negmerge_cli.classifier import search as rules
from negmerge_cli.classifier.eval_run import _choose, _say_choice
from negmerge_cli.cli.eval_tables import search_table
from negmerge_cli.core import output as output_module
from negmerge_cli.results import ClassifierSearchPoint, ClassifierSearchResult, ReferenceMetrics, UnlearningMetrics
from negmerge_cli.results.classifier_search_file import read_search
from negmerge_cli.training.options import SearchOptions

BEST_SINGLE = Path(__file__).resolve().parents[2] / "docs" / "reproduce" / "classifier" / "best_single.py"
DATA = {"dataset": "digits", "root": None, "n_train": 1437, "n_test": 360, "num_classes": 10,
        "train_labels_sha256": "0" * 64}


def _point(coef, dr, df, dtest=0.9, mia=0.1, gap=None, val=None):
    return ClassifierSearchPoint(coef, UnlearningMetrics(dr, df, dtest, mia), gap, val_acc=val)


def _curve(seed: int, n: int = 11, val: bool = False) -> list[ClassifierSearchPoint]:
    """A random curve: Dr and Df falling with lambda (with noise), Dtest, MIA and the gap anything."""
    rng = random.Random(seed)
    points, dr, df = [], 1.0, 1.0
    for i in range(n):
        coef = round(i / (n - 1), 10)
        if i:
            dr, df = max(0.0, dr - rng.uniform(0, 0.03)), max(0.0, df - rng.uniform(0, 0.2))
        points.append(_point(coef, round(dr, 4), round(df, 4), rng.random(), rng.random(), rng.uniform(0, 50),
                             round(max(0.0, dr - rng.uniform(0, 0.05)), 4) if val else None))
    return points


def _altered(points: list[ClassifierSearchPoint], seed: int) -> list[ClassifierSearchPoint]:
    """The same points with Dtest, MIA-efficacy and the Avg. Gap (the reference's part) replaced."""
    rng = random.Random(seed)
    return [replace(p, metrics=replace(p.metrics, dtest_acc=rng.random(), mia_efficacy=rng.random()),
                    avg_gap=rng.choice([None, rng.uniform(0, 100)])) for p in points]


def _result(points, select="retain-bar", threshold=0.95, reference=None) -> ClassifierSearchResult:
    choice = _choose(points, SearchOptions("tau.safetensors", coefs=[p.coef for p in points], threshold=threshold,
                                           select=select), rules)
    return ClassifierSearchResult(model="resnet8-cifar", checkpoint="original.safetensors", vector="tau.safetensors",
                                  data=DATA, forget_split={"file": "forget.json", "sha256": "1" * 64}, points=points,
                                  reference=reference, counts={"dr": 9, "df": 1, "dtest": 4, "shadow_members": 4},
                                  seconds=0.5, **choice)


class _Guarded:
    """Stands for a point's metrics: reading Dtest or MIA-efficacy fails the test."""

    def __init__(self, dr, df):
        self.dr_acc, self.df_acc = dr, df

    @property
    def dtest_acc(self):
        raise AssertionError("the honest rule read Dtest accuracy")

    @property
    def mia_efficacy(self):
        raise AssertionError("the honest rule read MIA-efficacy (its non-members are Dtest)")


class _GuardedPoint:
    def __init__(self, coef, dr, df, val=None):
        self.coef, self.metrics, self.val_acc = coef, _Guarded(dr, df), val

    @property
    def avg_gap(self):
        raise AssertionError("the honest rule read the Avg. Gap to the retrained model")


def test_the_default_rule_is_the_honest_one():
    assert SearchOptions("tau").select == rules.DEFAULT_SELECT == "retain-bar"
    assert not rules.is_oracle("retain-bar") and rules.is_oracle("gap")
    assert rules.reads("retain-bar", _curve(0)) == ("dr_acc", "df_acc")
    assert rules.reads("retain-bar", _curve(0, val=True)) == ("val_acc", "df_acc")
    assert {"dtest_acc", "mia_efficacy", "reference"} <= set(rules.reads("gap", _curve(0)))


@pytest.mark.parametrize("val", [False, True])
def test_the_honest_rule_never_reads_dtest_mia_or_the_reference(val):
    curve = [_GuardedPoint(p.coef, p.metrics.dr_acc, p.metrics.df_acc, p.val_acc) for p in _curve(3, val=val)]
    chosen = rules.select(curve, "retain-bar", 0.95)
    assert chosen is not None
    rules.retain_limit(curve, 0.95), rules.at_grid_end(curve, chosen), rules.describe("retain-bar", curve)
    assert rules.best_single([(chosen, "retain-bar"), (curve[0], "retain-bar")]) in (0, 1)


@pytest.mark.parametrize("seed", range(20))
def test_the_choice_is_unchanged_when_dtest_mia_or_the_reference_change(seed):
    curve = _curve(seed, val=seed % 2 == 1)
    first = _result(curve).to_json()
    reference = ReferenceMetrics("retrain.json", "eval_json", UnlearningMetrics(1.0, 0.0, 0.5, 1.0))
    for other in range(3):
        second = _result(_altered(curve, 1000 * seed + other), reference=reference if other else None).to_json()
        for field in ("chosen_at_grid_end", "retain_limit", "feasible", "oracle", "reads", "rule"):
            assert second[field] == first[field], field
        assert (second["chosen"] or {}).get("coef") == (first["chosen"] or {}).get("coef")


def test_the_hold_out_is_preferred_to_dr():
    # by Dr every lambda keeps 99%, so Dr would take the lowest Df (lambda 1); the hold-out falls at 0.5
    curve = [_point(0.0, 0.99, 0.9, val=0.90), _point(0.5, 0.99, 0.5, val=0.87), _point(1.0, 0.99, 0.1, val=0.80)]
    assert rules.select([replace(p, val_acc=None) for p in curve], "retain-bar", 0.95).coef == 1.0
    result = _result(curve)
    assert result.chosen.coef == 0.5 and result.retain_limit == pytest.approx(0.95 * 0.90)
    assert "hold-out val acc" in result.rule and result.reads == ("val_acc", "df_acc")
    assert read_search(json.loads(json.dumps(result.to_json()))) == result
    assert "val acc %" in _render(search_table(result)) and "hold-out val" in _render(search_table(result))


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=240, color_system=None)
    console.print(table)
    return console.file.getvalue()


def _said(monkeypatch, result) -> str:
    console = Console(file=io.StringIO(), width=400, color_system=None)
    monkeypatch.setattr(output_module, "_current", output_module.Output(console=console))
    _say_choice(result, rules)
    return console.file.getvalue()


def test_gap_is_marked_as_the_oracle_in_the_json_the_rule_and_the_table(monkeypatch):
    curve = [_point(0.0, 1.0, 1.0, gap=9.0), _point(0.5, 0.98, 0.5, gap=1.0), _point(1.0, 0.9, 0.0, gap=2.0)]
    reference = ReferenceMetrics("retrain.json", "eval_json", UnlearningMetrics(1.0, 0.4, 0.9, 0.6))
    oracle, honest = _result(curve, "gap", reference=reference), _result(curve, reference=reference)
    found = json.loads(json.dumps(oracle.to_json()))
    assert found["oracle"] is True and found["select"] == "gap" and found["rule"].startswith("oracle:")
    assert found["chosen"]["coef"] == 0.5 and "reference" in found["reads"]
    mine = json.loads(json.dumps(honest.to_json()))
    assert mine["oracle"] is False and "oracle" not in mine["rule"] and mine["reads"] == ["dr_acc", "df_acc"]
    assert read_search(found) == oracle and read_search(mine) == honest

    table, plain = _render(search_table(oracle)), _render(search_table(honest))
    assert "ORACLE" in table and "Avg. Gap (oracle)" in table
    assert "oracle" not in plain.lower() and "reads Dr and Df only" in plain
    assert "oracle" in _said(monkeypatch, oracle) and "oracle" not in _said(monkeypatch, honest)


def test_search_files_written_before_the_oracle_field_still_read():
    curve = [_point(0.0, 1.0, 1.0, gap=9.0), _point(0.5, 0.98, 0.5, gap=1.0), _point(1.0, 0.9, 0.0, gap=2.0)]
    for select in ("gap", "retain-bar"):
        old = _result(curve, select).to_json()
        for field in ("oracle", "reads", "chosen_at_grid_end"):
            del old[field]
        read = read_search(old)
        assert read.oracle is (select == "gap") and read.reads == ()
        assert read.at_grid_end is (read.chosen.coef == 1.0)


def test_a_lambda_at_the_grids_end_is_flagged_with_a_wider_grid(monkeypatch):
    curve = [_point(round(i / 20, 10), 1.0, 1 - i / 20) for i in range(21)]  # Df falls to the end: lambda 1
    result = _result(curve)
    assert result.chosen.coef == 1.0 and result.at_grid_end and result.to_json()["chosen_at_grid_end"] is True
    said = _said(monkeypatch, result)
    assert "warning:" in said and "grid's last point" in said and "0:2:41" in said
    assert "grid's last point" in _render(search_table(result))
    inside = _result(curve[:11] + [replace(p, metrics=replace(p.metrics, dr_acc=0.5)) for p in curve[11:]])
    assert inside.chosen.coef == 0.5 and not inside.at_grid_end and inside.to_json()["chosen_at_grid_end"] is False
    assert "warning" not in _said(monkeypatch, inside)
    assert not rules.at_grid_end([curve[0]], curve[0])  # one point: no grid to widen
    assert rules.wider_grid([_point(c, 1, 1) for c in (0.5, 1.0, 1.5)]) == "0.5:2.5:5"


def _searches(tmp_path: Path, results: list[ClassifierSearchResult]) -> list[Path]:
    paths = []
    for i, result in enumerate(results):
        paths.append(tmp_path / f"vector-{i}.json")
        paths[-1].write_text(json.dumps(result.to_json()))
    return paths


def _script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BEST_SINGLE), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("select", ["retain-bar", "gap"])
def test_best_single_uses_the_merges_rule_in_the_library_and_the_makefiles_script(tmp_path, select):
    rng = random.Random(7)
    for trial in range(8):
        results = []
        for i in range(5):
            curve = _curve(rng.randrange(10**6), val=trial % 2 == 1)
            if rng.random() < 0.3:  # a tie on Df at the chosen lambda with another vector
                curve = [replace(p, metrics=replace(p.metrics, df_acc=0.25)) for p in curve]
            results.append(_result(curve, select))
        expected = rules.best_single([(r.chosen, r.select) for r in results])
        folder = tmp_path / f"{select}-{trial}"
        folder.mkdir()
        done = _script("--choice", folder / "choice.json", *_searches(folder, results))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"vector-{expected}"
        choice = json.loads((folder / "choice.json").read_text())
        assert choice["chosen"]["name"] == f"vector-{expected}" and choice["oracle"] is (select == "gap")
        if select == "retain-bar":  # the lowest Df at each vector's chosen lambda; ties to the higher Dr
            best = results[expected].chosen
            assert all((r.chosen.metrics.df_acc, -_retained(r.chosen)) >= (best.metrics.df_acc, -_retained(best))
                       for r in results)


def _retained(point) -> float:
    return point.val_acc if point.val_acc is not None else point.metrics.dr_acc


def test_best_single_refuses_mixed_rules(tmp_path):
    curve = _curve(1)
    with pytest.raises(Exception, match="different rules"):
        rules.best_single([(_result(curve).chosen, "retain-bar"), (_result(curve).chosen, "gap")])
    done = _script(*_searches(tmp_path, [_result(curve), _result(curve, "gap")]))
    assert done.returncode != 0 and "different rules" in done.stderr
