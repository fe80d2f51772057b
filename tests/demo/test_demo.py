"""`negmerge demo --quick` end to end: real pretraining, fine-tunes, merges, searches, evals; and
`negmerge report` on the demo's folder."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from helpers import assert_clean_failure, run_cli


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo for every test of this module: (workdir, cache folder, the CLI run)."""
    root = tmp_path_factory.mktemp("demo")
    workdir, cache = root / "demo", root / "cache"
    result = run_cli("demo", "--quick", "--workdir", workdir, "--cache-dir", cache, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, cache, result


@pytest.mark.slow
def test_quick_demo_forgets_digits_and_keeps_textures(quick_demo):
    workdir, cache, result = quick_demo
    assert "Traceback" not in result.stderr

    results = json.loads((workdir / "results.json").read_text())
    start, chance = results["start"], results["chance"]
    assert start["forget"] >= 3 * chance["forget"] and start["retain"] >= 3 * chance["retain"]
    assert set(results["methods"]) == {"negmerge", "mean", "ties", "magmax", "best_single"}
    negmerge = results["methods"]["negmerge"]
    assert negmerge["forget"] <= start["forget"] - 0.15, (start, negmerge)  # clearly forgets
    assert negmerge["retain"] >= 0.95 * start["retain"], (start, negmerge)
    assert 0 < negmerge["kept_fraction"] < 1 and 0 < negmerge["lambda"] <= 1
    assert negmerge["nonzero_fraction"] < results["methods"]["mean"]["nonzero_fraction"]

    # every stage's files are in the one working folder, and the model is cached for next time
    for name in ("tradeoff.png", "commands.sh", "pretrained.safetensors", "finetune/manifest.json",
                 "merged/negmerge.safetensors", "unlearned/negmerge.safetensors", "search/negmerge.json"):
        assert (workdir / name).exists(), name
    assert len(list(cache.glob("negmerge-demo-*.safetensors"))) == 1
    assert "negmerge merge --method negmerge" in (workdir / "commands.sh").read_text()
    assert "negmerge" in result.stderr and "best_single" in result.stderr  # the table


@pytest.mark.slow
def test_matched_retain_table_searches_the_extended_grid(quick_demo):
    """The second table: each method's lowest Val forget accuracy over lambda 0 to 3 at the same
    retain bar, so it can only forget as much as or more than under the paper's grid (0 to 1)."""
    workdir, _, result = quick_demo
    results = json.loads((workdir / "results.json").read_text())
    matched = results["matched"]
    assert matched["coefs"][0] == 0 and matched["coefs"][-1] == 3 and set(matched["coefs"]) > {i / 20 for i in range(21)}
    assert set(matched["methods"]) == set(results["methods"])
    for method, headline in results["methods"].items():
        extended = matched["methods"][method]
        search = json.loads((workdir / extended["search"]).read_text())
        assert search["coefs"] == matched["coefs"] and search["chosen"]["coef"] == extended["lambda"]
        assert extended["val_forget"] <= headline["val_forget"], method
        assert extended["val_retain"] >= search["retain_limit"]
        paper = json.loads((workdir / headline["search"]).read_text())
        assert paper["retain_limit"] == search["retain_limit"]  # the same bar
        assert max(paper["coefs"]) == 1.0
    assert "matched retain (lambda 0 to 3)" in " ".join(result.stderr.split())  # the title may wrap
    assert (workdir / "tradeoff.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow
def test_report_of_the_demo_folder_in_every_format(quick_demo, cli, tmp_path):
    workdir, _, _ = quick_demo
    results = json.loads((workdir / "results.json").read_text())
    markdown = cli("report", workdir)
    assert markdown.returncode == 0, markdown.stderr
    varied = f"; the {results['k']} fine-tunes vary seeds"  # the titles say what the k differ in
    assert f"### lambda chosen by the paper's rule{varied}" in markdown.stdout
    headline, matched = markdown.stdout.split(f"### matched retain (lambda 0 to 3){varied}")
    negmerge = results["methods"]["negmerge"]
    assert f"| NegMerge | {100 * negmerge['forget']:.2f} | {100 * negmerge['retain']:.2f} |" in headline
    assert f"| NegMerge | {negmerge['lambda']:.2f} (kept {100 * negmerge['kept_fraction']:.1f}%) |" in headline
    start = results["start"]
    assert f"| Pretrained | {100 * start['forget']:.2f} | {100 * start['retain']:.2f} |" in headline
    mean = results["matched"]["methods"]["mean"]
    assert f"| Uniform Merge (mean) | {100 * mean['forget']:.2f} | {100 * mean['retain']:.2f} |" in matched

    data = json.loads(cli("report", workdir, "--format", "json").stdout)
    assert data["settings"] == ["paper", "matched_retain"] and data["retain_dataset"] == "textures"
    assert data["setting_titles"]["matched_retain"] == "matched retain (lambda 0 to 3)" + varied
    rows = {(r["setting"], r["method"]): r for r in data["rows"]}
    for method, outcome in results["methods"].items():
        row = rows["paper", method]
        assert (row["forget_acc1"], row["retain_acc1"], row["lambda"]) == (outcome["forget"], outcome["retain"],
                                                                           outcome["lambda"])
    table = list(csv.DictReader(io.StringIO(cli("report", workdir, "--format", "csv").stdout)))
    best = next(r for r in table if r["setting"] != "paper" and r["method"] == "best_single")
    assert float(best["forget_acc1"]) == pytest.approx(results["matched"]["methods"]["best_single"]["forget"], abs=5e-7)
    assert best["vector"] == results["matched"]["methods"]["best_single"]["vector"]

    plot = tmp_path / "tradeoff.svg"
    assert cli("report", workdir, "--plot", plot, "-q").returncode == 0
    assert plot.read_bytes().startswith(b"<?xml") and b"best_single" in plot.read_bytes()


@pytest.mark.slow
def test_the_hyperparameter_variant_runs_end_to_end_and_reports_as_such(quick_demo, cli, tmp_path):
    """`--vary hyperparameters` for real (the pretrained model cached by the quick demo): k fine-tunes
    over the learning rates at one seed, the same budget, recorded and reported as that variant."""
    _, cache, _ = quick_demo
    workdir = tmp_path / "hyper"
    result = cli("demo", "--quick", "--vary", "hyperparameters", "--workdir", workdir, "--cache-dir", cache, "-q")
    assert result.returncode == 0, result.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["settings"]["vary"] == "hyperparameters" and results["settings"]["total_steps"] == 3 * 80
    points = [p["hyperparameters"] for p in json.loads((workdir / "finetune" / "manifest.json").read_text())["points"]]
    assert {p["seed"] for p in points} == {0} and len({(p["lr"], p["steps"]) for p in points}) == 3
    assert set(results["methods"]) == {"negmerge", "mean", "ties", "magmax", "best_single"}
    report = cli("report", workdir)
    assert report.returncode == 0, report.stderr
    assert "### lambda chosen by the paper's rule; the 3 fine-tunes vary hyperparameters" in report.stdout


def test_demo_refuses_a_file_as_workdir(tmp_path, cli):
    target = tmp_path / "file"
    target.write_text("x")
    assert_clean_failure(cli("demo", "--workdir", target), "--workdir")


@pytest.mark.slow
def test_the_demo_records_its_variant_and_how_alike_its_vectors_are(quick_demo):
    """settings: the default varies seeds; vectors: the k task vectors' norms, cosine similarity and
    sign agreement, against a dense computation over the vector files the demo wrote."""
    from safetensors.torch import load_file

    workdir, _, result = quick_demo
    results = json.loads((workdir / "results.json").read_text())
    assert results["settings"]["vary"] == "seeds" and results["settings"]["total_steps"] == 3 * 80
    manifest = json.loads((workdir / "finetune" / "manifest.json").read_text())
    points = [p["hyperparameters"] for p in manifest["points"]]
    assert sorted(p["seed"] for p in points) == [0, 1, 2] and len({(p["lr"], p["steps"]) for p in points}) == 1

    rows = []
    for path in sorted((workdir / "vectors").glob("*.safetensors")):
        state = load_file(str(path))
        rows.append(torch.cat([state[n].flatten().double() for n in sorted(state) if state[n].is_floating_point()]))
    rows = torch.stack(rows)
    found = results["vectors"]
    assert found["norms"] == pytest.approx([float(r.norm()) for r in rows])
    cosines = [float(rows[i] @ rows[j] / (rows[i].norm() * rows[j].norm())) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert found["cosine_mean"] == pytest.approx(sum(cosines) / 3) and found["cosine_min"] == pytest.approx(min(cosines))
    changed = (rows != 0).any(0)
    agreed = ((rows > 0).all(0) | (rows < 0).all(0)).sum()
    assert found["sign_agreement"] == pytest.approx(float(agreed / changed.sum()))
    # what NegMerge keeps is that agreement (up to elements whose mean is exactly zero)
    assert found["sign_agreement"] == pytest.approx(results["methods"]["negmerge"]["kept_fraction"], abs=1e-3)
    assert "differing in their seeds" in " ".join(result.stderr.split()) and "sign of" in result.stderr
