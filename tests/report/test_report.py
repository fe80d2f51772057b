"""`negmerge report` on the real outputs of a tiny sweep laid out as the reproduction Makefile lays
them out (OUT/DS/<method>/{search,test,inspect}.json), in every format, with its figures; and
`eval --plot` in every figure format. The demo's folder is reported in tests/demo/test_demo.py."""

from __future__ import annotations

import csv
import io
import json

import pytest
from clip_helpers import TINY, make_image_folder
from helpers import assert_clean_failure

pytestmark = pytest.mark.slow
METHODS = ("negmerge", "mean")
COEFS = [0.5, 1.0, 1.5, 2.0]  # without 0: the random tiny model forgets least at 0
HEADERS = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF-"}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Three "fine-tunes" of the tiny CLIP (its image encoder moved along a shared direction plus
    noise, as in test_eval), laid out as the Makefile's rules lay them out: NegMerge and mean merges,
    their inspection, the lambda searches (forget digits, retain an image folder), the unlearned
    models' test accuracies and the base's, from the library calls the Makefile's commands make."""
    import torch
    from safetensors.torch import save_file

    from negmerge_cli.clip import models
    from negmerge_cli.stages import (
        EvalOptions,
        SearchOptions,
        StreamOptions,
        apply_vector,
        evaluate,
        inspect_checkpoint,
        merge_vectors,
        search_coefficient,
    )

    root = tmp_path_factory.mktemp("report")
    shapes = make_image_folder(root / "shapes", per_class=20)
    model = models.create_model(TINY)
    base = models.save_checkpoint(model, root / "base.safetensors", {"format": "pt"})
    state = models.state_dict_for_saving(model)
    generator = torch.Generator().manual_seed(0)
    shared = {k: torch.randn(v.shape, generator=generator) for k, v in state.items()
              if k.startswith("visual.") and v.is_floating_point()}
    points = []
    for index in range(3):
        moved = {k: (v + 0.3 * (shared[k] + torch.randn(v.shape, generator=generator)) if k in shared else v).contiguous()
                 for k, v in state.items()}
        points.append(root / f"ft{index}.safetensors")
        save_file(moved, str(points[-1]), {"format": "pt"})
    on = lambda checkpoint: EvalOptions(model=TINY, checkpoint=str(checkpoint), device="cpu", workers=0)
    tests = ["digits:test", str(shapes)]
    for method in METHODS:
        folder = root / "out" / "digits" / method
        tau = folder / "tau.safetensors"
        merge_vectors(points, tau, method, base=base, options=StreamOptions(device="cpu"))
        (folder / "inspect.json").write_text(json.dumps(inspect_checkpoint(tau).to_json()))
        searched = search_coefficient(on(base), SearchOptions(str(tau), "digits:val", f"{shapes}:val", coefs=COEFS),
                                      json_out=folder / "search.json")
        assert searched.chosen is not None, method
        apply_vector(base, tau, -searched.chosen.coef, folder / "unlearned.safetensors", StreamOptions(device="cpu"))
        evaluate(tests, on(folder / "unlearned.safetensors"), json_out=folder / "test.json")
    evaluate(tests, on(base), json_out=root / "out" / "digits" / "pretrained" / "test.json")
    single = root / "out" / "digits" / "single" / "x"  # a best-single candidate: never a row
    single.mkdir(parents=True)
    (single / "search.json").write_text((root / "out" / "digits" / "mean" / "search.json").read_text())
    return root / "out"


def _load(out, method, name):
    return json.loads((out / "digits" / method / name).read_text())


def test_markdown_table_holds_the_runs_numbers(out, cli):
    result = cli("report", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pairs = {m: tuple(e["metrics"]["acc1"] for e in _load(out, m, "test.json")) for m in ("pretrained", *METHODS)}
    assert len(set(pairs.values())) == 3  # distinct rows: a mix-up would show
    assert lines[0].startswith(f"Test accuracy (%) ({TINY}): Df = forget set (lower is better), Dr = shapes.")
    assert lines[2] == "| Method | digits Df | digits Dr |"
    for method, title in (("pretrained", "Pretrained"), ("mean", "Uniform Merge (mean)"), ("negmerge", "NegMerge")):
        forget, retain = (e["metrics"]["acc1"] for e in _load(out, method, "test.json"))
        assert f"| {title} | {100 * forget:.2f} | {100 * retain:.2f} |" in lines
    methods = [line.split(" | ")[0] for line in lines[4:7]]
    assert methods == ["| Pretrained", "| Uniform Merge (mean)", "| NegMerge"]  # the paper's order
    negmerge = _load(out, "negmerge", "search.json")["chosen"]["coef"]
    kept = _load(out, "negmerge", "inspect.json")["nonzero_fraction"] / _load(out, "mean", "inspect.json")["nonzero_fraction"]
    assert f"| NegMerge | {negmerge:.2f} (kept {100 * kept:.1f}%) |" in lines  # of what the mean's vector changed
    assert "x" not in result.stdout.split("| Method |")[1].split("\n")[0]  # single/x is no column


def test_csv_and_json_carry_every_figure_as_fractions(out, cli):
    rows = list(csv.DictReader(io.StringIO(cli("report", out, "--format", "csv").stdout)))
    assert [(r["method"], r["dataset"]) for r in rows] == [  # one dataset: no average lines
        ("pretrained", "digits"), ("mean", "digits"), ("negmerge", "digits")]
    data = json.loads(cli("report", out, "--format", "json").stdout)
    assert data["model"] == TINY and data["datasets"] == ["digits"] and data["retain_dataset"] == "shapes"
    by_method = {r["method"]: r for r in data["rows"]}
    for method in ("pretrained", *METHODS):
        forget, retain = (e["metrics"]["acc1"] for e in _load(out, method, "test.json"))
        line = next(r for r in rows if r["method"] == method and r["dataset"] == "digits")
        assert float(line["forget_acc1"]) == pytest.approx(forget, abs=5e-7)  # 6 decimals
        assert float(line["retain_acc1"]) == pytest.approx(retain, abs=5e-7)
        assert by_method[method]["forget_acc1"] == forget and by_method[method]["retain_acc1"] == retain
        assert by_method[method]["split"] == "test"
    for method in METHODS:
        assert by_method[method]["lambda"] == _load(out, method, "search.json")["chosen"]["coef"]
        assert by_method[method]["nonzero_fraction"] == _load(out, method, "inspect.json")["nonzero_fraction"]
    assert by_method["mean"]["kept_fraction"] is None and by_method["negmerge"]["kept_fraction"] is not None
    assert by_method["pretrained"]["lambda"] is None and by_method["pretrained"]["nonzero_fraction"] is None


def test_format_takes_the_suffix_names_that_o_takes(out, cli):
    """--format md is what -o x.md means; an unknown name is refused with the names."""
    assert cli("report", out, "--format", "md").stdout == cli("report", out, "--format", "markdown").stdout != ""
    refused = cli("report", out, "--format", "xlsx")
    assert refused.returncode == 2 and "--format 'xlsx'" in refused.stderr and "md" in refused.stderr


def test_a_search_alone_gives_its_val_point_and_files_take_their_folders_name(out, cli):
    search = out / "digits" / "negmerge" / "search.json"
    chosen = json.loads(search.read_text())["chosen"]
    data = json.loads(cli("report", search, "--format", "json").stdout)
    (row,) = data["rows"]
    assert (row["method"], row["dataset"], row["split"]) == ("negmerge", "digits", "val")
    assert (row["forget_acc1"], row["retain_acc1"], row["lambda"]) == (chosen["forget_acc1"], chosen["retain_acc1"],
                                                                      chosen["coef"])
    table = cli("report", search).stdout
    assert table.startswith("Val accuracy at the chosen lambda") and f"{100 * chosen['forget_acc1']:.2f}v" in table
    # the search and the test of the model it chose complete each other; the same result twice does not
    both = json.loads(cli("report", search, out / "digits" / "negmerge" / "test.json", "--format", "json").stdout)
    assert both["rows"][0]["split"] == "test" and both["rows"][0]["lambda"] == chosen["coef"]
    assert_clean_failure(cli("report", search, search), "two results for negmerge on digits")


def test_published_figures_beside_ours(out, cli):
    """The tiny CLIP on digits is not the paper's setting: its figures come apart, marked."""
    table = cli("report", out, "--published").stdout
    assert "| Avg Df |" not in table and "(20.76)" not in table
    assert "Published (ViT-B/32" in table and "Another setting than the rows above" in table
    assert "| NegMerge | average of 8 | - | 20.76 | 60.36 |" in table
    data = json.loads(cli("report", out, "--published", "--format", "json").stdout)
    assert data["published"]["same_setting_as_rows"] is False
    assert data["published"]["averages"]["negmerge"] == {"forget_acc1": 0.2076, "retain_acc1": 0.6036}
    assert data["published"]["cells"][0] == {"method": "negmerge", "dataset": "cars", "lambda": 0.9,
                                             "forget_acc1": 0.274, "retain_acc1": 0.6038}
    rows = list(csv.DictReader(io.StringIO(cli("report", out, "--published", "--format", "csv").stdout)))
    average = next(r for r in rows if r["method"] == "mean" and r["dataset"] == "average")
    assert average["setting"] == "published" and average["forget_acc1"] == "0.225" and average["n_datasets"] == "8"
    assert "published_forget_acc1" not in average


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_trade_off_figure_and_table_files(out, cli, tmp_path, suffix):
    plot, table = tmp_path / f"tradeoff{suffix}", tmp_path / "table.csv"
    result = cli("report", out, "-o", table, "--plot", plot)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and table.read_text().startswith("setting,method,dataset,")  # format from the suffix
    data = plot.read_bytes()
    assert data.startswith(HEADERS[suffix]) and len(data) > 5000
    if suffix == ".svg":
        assert b"<svg" in data[:2000] and b"negmerge" in data and b"retain bar" in data
    if suffix != ".png":  # no date inside: the same results give the same file
        again = tmp_path / f"again{suffix}"
        cli("report", out, "--plot", again, "-q")
        assert again.read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_outputs_are_refused_unless_new(out, cli, tmp_path):
    target = tmp_path / "table.md"
    target.write_text("keep")
    assert_clean_failure(cli("report", out, "-o", target), str(target), "--force")
    assert_clean_failure(cli("report", out, "--plot", target.with_suffix(".png"), "-o", target), "--force")
    assert not target.with_suffix(".png").exists() and target.read_text() == "keep"
    assert cli("report", out, "-o", target, "--force").returncode == 0 and target.read_text().startswith("Test")
    test_json = out / "digits" / "mean" / "test.json"
    before = test_json.read_bytes()
    assert_clean_failure(cli("report", out, "-o", test_json, "--force"), "also an input")
    assert test_json.read_bytes() == before


def test_bad_inputs_fail_with_one_line(out, cli, tmp_path):
    assert_clean_failure(cli("report", tmp_path / "missing.json"), "missing.json", "no such file")
    assert_clean_failure(cli("report", out, "--format", "xml"), "--format 'xml'", "markdown, csv or json")
    assert_clean_failure(cli("report", out, "--plot", tmp_path / "x.jpg"), "--plot", "x.jpg", ".png, *.svg or *.pdf")
    foreign = tmp_path / "foreign.json"
    for text in ('{"accuracy": 0.5}', "[1, 2]", "not json", '{"task": "coefficient_search", "model": "m"}'):
        foreign.write_text(text)
        assert_clean_failure(cli("report", foreign), "foreign.json", "not a negmerge result")
    inspected = out / "digits" / "mean" / "inspect.json"
    assert_clean_failure(cli("report", inspected), "inspect.json", "holds no accuracies")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(cli("report", tmp_path / "empty"), "empty", "no results found")
    assert not list(tmp_path.glob("*.md"))


def test_eval_plot_takes_png_svg_or_pdf(out, cli, tmp_path):
    """The search curve of one vector, from the same search as the report's rows."""
    from negmerge_cli.report.plots import save, search_curve
    from negmerge_cli.results import SearchResult
    from negmerge_cli.results.files import read_back

    search = read_back(SearchResult, json.loads((out / "digits" / "negmerge" / "search.json").read_text()))
    assert search.to_json() == json.loads((out / "digits" / "negmerge" / "search.json").read_text())  # round trip
    for suffix, header in {**HEADERS, "": HEADERS[".png"]}.items():  # no suffix: PNG
        path = save(search_curve(search), tmp_path / f"curve{suffix}")
        assert path.read_bytes().startswith(header)
    tau = out / "digits" / "negmerge" / "tau.safetensors"
    base = out.parent / "base.safetensors"
    assert_clean_failure(cli("eval", "-m", TINY, "-c", base, "--vector", tau, "--forget", "digits", "--retain",
                             "digits", "--plot", tmp_path / "curve.gif"), "--plot", "curve.gif", "*.png, *.svg or *.pdf")
