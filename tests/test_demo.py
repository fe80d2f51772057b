"""`negmerge demo --quick` end to end: real pretraining, fine-tunes, merges, searches, evals."""

from __future__ import annotations

import json

from helpers import assert_clean_failure, run_cli


def test_quick_demo_forgets_digits_and_keeps_textures(tmp_path):
    workdir, cache = tmp_path / "demo", tmp_path / "cache"
    result = run_cli("demo", "--quick", "--workdir", workdir, "--cache-dir", cache, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    results = json.loads((workdir / "results.json").read_text())
    start, chance = results["start"], results["chance"]
    assert start["forget"] >= 3 * chance["forget"] and start["retain"] >= 3 * chance["retain"]
    assert set(results["methods"]) == {"negmerge", "mean", "ties", "magmax", "best_single"}
    negmerge = results["methods"]["negmerge"]
    assert negmerge["forget"] <= start["forget"] - 0.15, (start, negmerge)  # clearly forgets
    assert negmerge["retain"] >= 0.95 * start["retain"], (start, negmerge)
    assert 0 < negmerge["kept"] < 1 and 0 < negmerge["lambda"] <= 1
    assert negmerge["nonzero_fraction"] < results["methods"]["mean"]["nonzero_fraction"]

    # every stage's files are in the one working folder, and the model is cached for next time
    for name in ("tradeoff.png", "commands.sh", "pretrained.safetensors", "finetune/manifest.json",
                 "merged/negmerge.safetensors", "unlearned/negmerge.safetensors", "search/negmerge.json"):
        assert (workdir / name).exists(), name
    assert len(list(cache.glob("negmerge-demo-*.safetensors"))) == 1
    assert "negmerge merge --method negmerge" in (workdir / "commands.sh").read_text()
    assert "negmerge" in result.stderr and "best_single" in result.stderr  # the table


def test_demo_refuses_a_file_as_workdir(tmp_path, cli):
    target = tmp_path / "file"
    target.write_text("x")
    assert_clean_failure(cli("demo", "--workdir", target), "--workdir")
