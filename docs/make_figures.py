"""Regenerate the docs' figures and the numbers they quote from real demo runs.

    python docs/make_figures.py                      # runs both quick demos into docs-runs/ (a few minutes)
    python docs/make_figures.py --clip W1 --classifier W2   # or reuse finished demo folders
    python docs/make_figures.py --only classifier --classifier W2   # one part; the others' records kept
    python docs/make_figures.py --only variants --variants W3      # the CLIP demo, seeds vs hyperparameters

It runs (or reuses) ``negmerge demo --quick``, ``negmerge demo --quick --scenario classifier`` and
the CLIP demo four ways (``[--quick] --vary seeds|hyperparameters``, in W3/quick-seeds,
W3/quick-hyperparameters, W3/full-seeds, W3/full-hyperparameters: the two full runs take minutes),
then writes, each through the tool's one writer (negmerge_cli/core/files.py):

- docs/images/tradeoff.png: ``negmerge report CLIP --plot`` (the real command);
- docs/images/search-curve.png: the NegMerge vector's search curve (``eval --plot``'s figure);
- docs/images/classifier-tradeoff.png: the classifier demo's figure;
- docs/generated/demo-runs.json: the small record of both runs the docs quote from;
- every ``<!-- generated:NAME -->`` ... ``<!-- /generated:NAME -->`` region of the docs in
  REGIONS, rendered from that record alone (tests/demo/test_docs.py checks they are up to date
  without running a demo).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RECORD = DOCS / "generated" / "demo-runs.json"
IMAGES = DOCS / "images"
COMMAND = "python docs/make_figures.py"
# region name -> the doc it lives in
REGIONS = {"demo-results": "demo.md", "search-curve": "eval.md", "classifier-table": "classifier.md",
           "classifier-figure": "demo.md", "demo-variants": "demo.md"}
# the CLIP demo's four runs: folder name under --variants -> the command that made it
VARIANTS = {f"{size}-{vary}": f"negmerge demo{' --quick' if size == 'quick' else ''} --vary {vary}"
            for size in ("quick", "full") for vary in ("seeds", "hyperparameters")}
CLIP_METHODS = ("negmerge", "mean", "ties", "magmax", "best_single")
NAMES = {"original": "original", "retrain": "retrain", "negmerge": "NegMerge", "mean": "mean", "ties": "TIES (0.2)",
         "magmax": "MagMax", "best_single": "best single", "negmerge (buffers include)": "NegMerge, buffers include"}
_REGION = re.compile(r"(<!-- generated:(?P<name>[\w-]+) [^>]*-->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


# -- the record: what the docs quote, from the demo folders ------------------------------------------


def record(clip: Path | None, classifier: Path | None, earlier: dict, variants: Path | None = None) -> dict:
    """The small JSON the docs' generated regions are rendered from (a part whose folder is not
    given is kept from the ``earlier`` record)."""
    data = dict(earlier)
    if variants is not None:
        data["clip_variants"] = {name: _variant(variants / name, command) for name, command in VARIANTS.items()}
    if clip is not None:
        search = _read(clip / "search" / "negmerge.json")
        data["clip"] = {"command": "negmerge demo --quick", "results": _read(clip / "results.json"),
                        "negmerge_search": {k: search[k] for k in ("threshold", "retain_limit", "base", "chosen",
                                                                   "points")}}
    if classifier is not None:
        results = _read(classifier / "results.json")
        data["classifier"] = {"command": "negmerge demo --quick --scenario classifier",
                              "results": {k: v for k, v in results.items() if k != "curves"}}
    return data


def _variant(folder: Path, command: str) -> dict:
    """What the comparison quotes of one CLIP demo run: its settings, timings, the start, each
    method's lambda and test accuracies on both grids, and how alike its k vectors are."""
    results = _read(folder / "results.json")
    keep = ("lambda", "forget", "retain", "feasible", "kept_fraction")
    pick = lambda outcomes: {m: {k: outcomes[m][k] for k in keep if k in outcomes[m]} for m in CLIP_METHODS}
    return {"command": command, "settings": results["settings"], "timings": results["timings"],
            "start": results["start"], "methods": pick(results["methods"]),
            "matched": pick(results["matched"]["methods"]), "vectors": results["vectors"]}


def _read(path: Path):
    from negmerge_cli.core import schema

    return schema.load(path)


# -- the regions, rendered from the record alone ----------------------------------------------------


def render(data: dict) -> dict[str, str]:
    """Every region whose run is in the record."""
    regions = {}
    if "clip" in data:
        regions |= {"demo-results": _demo_results(data["clip"]), "search-curve": _search_curve(data["clip"])}
    if "clip_variants" in data:
        regions["demo-variants"] = _demo_variants(data["clip_variants"])
    if "classifier" in data:
        regions |= {"classifier-table": _classifier_table(data["classifier"]),
                    "classifier-figure": _classifier_figure(data["classifier"])}
    return regions


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _demo_results(clip: dict) -> str:
    """results.json of the quick demo: the whole top level, NegMerge's entry in full, the rest elided."""
    results = clip["results"]
    lines = []
    for key, value in results.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            inner = []
            for name, entry in value.items():
                shown = json.dumps(_rounded(entry)) if name == "negmerge" else "{...}"
                inner.append(f"{json.dumps(name)}: {shown}")
            lines.append(f"{json.dumps(key)}: {{" + ",\n    ".join(inner) + "}")
        elif isinstance(value, (dict, list)) and len(json.dumps(value)) > 60:
            lines.append(f"{json.dumps(key)}: {'{...}' if isinstance(value, dict) else '[...]'}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(_rounded(value))}")
    body = "{" + ",\n ".join(lines) + "}"
    return (f"`results.json` of `{clip['command']}` (NegMerge's entry in full, the other entries elided; "
            f"regenerated by `{COMMAND}`):\n\n```json\n{body}\n```\n")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _search_curve(clip: dict) -> str:
    search = clip["negmerge_search"]
    points = sorted(search["points"], key=lambda p: p["coef"])
    base, chosen, bar = points[0], search["chosen"], search["retain_limit"]
    text = (f"The quick demo's NegMerge vector (`{clip['command']} -w negmerge-demo`, then "
            f"`negmerge-demo/search/negmerge.png`; regenerated by `{COMMAND}`): forget (digits) accuracy "
            f"falls from {_pct(base['forget_acc1'])} at λ = {base['coef']:g} to ")
    if chosen is None:
        return text + f"{_pct(points[-1]['forget_acc1'])} at λ = {points[-1]['coef']:g}, and no λ keeps the retain bar.\n"
    text += (f"{_pct(chosen['forget_acc1'])} at the chosen λ = {chosen['coef']:g}, where retain (textures) "
             f"accuracy is {_pct(chosen['retain_acc1'])} ({_pct(base['retain_acc1'])} at λ = 0; the bar is "
             f"{_pct(bar)})")
    if chosen["coef"] == points[-1]["coef"]:
        text += (f": the grid ends at λ = {chosen['coef']:g} with retain accuracy still above the bar, so the "
                 "paper's rule takes the grid's last λ.\n")
    else:
        text += ": past it, the next λ would cross the bar.\n"
    return text


def _rank(outcomes: dict, method: str) -> int:
    """``method``'s place by test forget accuracy, lowest first (1: forgets most)."""
    return 1 + sum(o["forget"] < outcomes[method]["forget"] for o in outcomes.values())


def _demo_variants(runs: dict) -> str:
    """The CLIP demo with seeds and with hyperparameters varied: each method's test accuracies on
    both lambda grids, the vectors' agreement, and NegMerge's rank in each."""
    names = list(runs)
    header = "| method | " + " | ".join(names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    lines = ["The runs: " + "; ".join(f"{n}: `{runs[n]['command']}`" for n in names) + f". Regenerated by `{COMMAND}`.",
             "", "Test accuracy, forget (digits) / retain (textures), and the chosen λ:", ""]
    for key, title in (("methods", "the paper's rule, λ 0 to 1"), ("matched", "the same rule, λ 0 to 3")):
        lines += [f"**{title}**", "", header, rule,
                  "| start | " + " | ".join(f"{_pct(runs[n]['start']['forget'])} / {_pct(runs[n]['start']['retain'])}"
                                             for n in names) + " |"]
        for method in CLIP_METHODS:
            cells = []
            for n in names:
                o = runs[n][key][method]
                coef = f"{o['lambda']:g}" if o["feasible"] else "none"
                cells.append(f"{_pct(o['forget'])} / {_pct(o['retain'])} ({coef})")
            lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
        ranks = ", ".join(f"{_rank(runs[n][key], 'negmerge')} ({n})" for n in names)
        lines += ["", f"NegMerge's place by test forget accuracy among the five (1: forgets most; equal accuracies "
                  f"share a place): {ranks}.", ""]
    lines += ["**the k task vectors** (all float elements; agreement: of the elements any fine-tune changed, "
              "those whose sign all k share, which NegMerge keeps)", "",
              "| run | k | varied | total steps | pairwise cosine, mean (lowest) | norms | sign agreement | "
              "norms of NegMerge, mean, TIES, MagMax | ‖NegMerge‖ / ‖mean‖ | wall time |", "| --- |" + " --- |" * 9]
    for n in names:
        run, v = runs[n], runs[n]["vectors"]
        settings, merged = run["settings"], v["merged"]
        merged_norms = ", ".join(f"{merged[m]['norm']:.2f}" for m in ("negmerge", "mean", "ties", "magmax"))
        varied = (f"seeds {', '.join(map(str, settings['seeds']))}" if settings["vary"] == "seeds" else
                  f"lr {', '.join(f'{x:g}' for x in settings['lr'])} x steps {', '.join(map(str, settings['steps']))}")
        lines.append(f"| {n} | {v['k']} | {varied} | {settings['total_steps']} | {v['cosine_mean']:.3f} "
                     f"({v['cosine_min']:.3f}) | {min(v['norms']):.3g} to {max(v['norms']):.3g} | "
                     f"{_pct(v['sign_agreement'])} | {merged_norms} | "
                     f"{merged['negmerge']['norm'] / merged['mean']['norm']:.3f} | "
                     f"{run['timings']['total_s'] - run['timings']['pretrain_s']:.0f} s |")
    lines += ["", "NegMerge's vector is the mean with the elements the k disagree on set to zero, so the ratio of "
              "their norms is also their cosine similarity. Wall time: fine-tunes to results, the pretrained model "
              "cached, one run at a time on one thread (`OMP_NUM_THREADS=1`) of a shared 2-core CPU.", ""]
    for n in names:
        run = runs[n]
        coefs = [run["methods"][m]["lambda"] for m in CLIP_METHODS if run["methods"][m]["feasible"]]
        by_norm = sorted(("negmerge", "mean", "ties", "magmax"), key=lambda m: run["vectors"]["merged"][m]["norm"])
        by_forget = sorted(("negmerge", "mean", "ties", "magmax"), key=lambda m: -run["methods"][m]["forget"])
        lines.append(f"- {n}: the paper's rule chose λ {min(coefs):g} to {max(coefs):g} (grid end 1); the four merges "
                     f"by norm, smallest first: {', '.join(NAMES[m] for m in by_norm)}; by test forget accuracy at "
                     f"the paper's rule, highest (forgets least) first: {', '.join(NAMES[m] for m in by_forget)}.")
    return "\n".join(lines) + "\n"


def _classifier_table(classifier: dict) -> str:
    results = classifier["results"]
    rows = results["rows"]
    lines = [f"Its table (`{classifier['command']}`; k = {results['k']}; percent; λ by {results['rule']}; "
             f"Avg. Gap to the retrained model, in points; regenerated by `{COMMAND}`):", "",
             "| method | λ | Dr | Df | Dtest | MIA-eff. | Avg. Gap |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        coef = "-" if row["lambda"] is None else f"{row['lambda']:g}"
        gap = "0" if name == "retrain" else f"{row['avg_gap_points']:.3f}"
        cells = " | ".join(f"{100 * row[k]:.2f}" for k in ("dr_acc", "df_acc", "dtest_acc", "mia_efficacy"))
        lines.append(f"| {NAMES.get(name, name)} | {coef} | {cells} | {gap} |")
    ranked = sorted(((row["avg_gap_points"], name) for name, row in rows.items()
                     if name not in ("original", "retrain") and row["avg_gap_points"] is not None))
    (first_gap, first), (second_gap, second) = ranked[0], ranked[1]
    negmerge = next((gap for gap, name in ranked if name == "negmerge"), None)
    lines += ["", f"In this run {NAMES.get(first, first)} has the smallest gap ({first_gap:.3f}), then "
              f"{NAMES.get(second, second)} ({second_gap:.3f})"
              + (f"; NegMerge's is {negmerge:.3f}" if first != "negmerge" and second != "negmerge" and negmerge is not None else "")
              + f". Wall time {results['timings']['total_s']:g} s (training {results['timings']['training_s']:g} s)."]
    return "\n".join(lines) + "\n"


def _classifier_figure(classifier: dict) -> str:
    return (f"![The classifier demo's trade-off](images/classifier-tradeoff.png)\n\n"
            f"`tradeoff.png` of `{classifier['command']}` (regenerated by `{COMMAND}`): (a) Df and Dr accuracy "
            "against λ per method, (b) Dr against Df near the retain bar, with each method's λ by the "
            "retain-bar rule (filled), the grid's smallest Avg. Gap (hollow) and the retrained model (star).\n")


def rewrite(text: str, regions: dict[str, str], doc: str) -> str:
    """``text`` with each of ``regions`` put between its markers; every region must be there once."""
    found = set()

    def body(match):
        name = match.group("name")
        if name not in regions:
            return match.group(0)
        found.add(name)
        return match.group(1) + regions[name] + match.group(4)

    new = _REGION.sub(body, text)
    missing = set(regions) - found
    if missing:
        raise SystemExit(f"{doc}: no <!-- generated:NAME --> region for {', '.join(sorted(missing))}")
    return new


def regions_of(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in _REGION.finditer(text)}


# -- running the demos and drawing ------------------------------------------------------------------


def _negmerge(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "negmerge_cli", *map(str, args)], check=True,
                   env=None if env is None else {**os.environ, **env})


def _ensure(folder: Path, *scenario: str) -> Path:
    if not (folder / "results.json").exists():
        _negmerge("demo", "--quick", "--workdir", folder, *scenario)
    return folder


def _variants(folder: Path) -> Path:
    """The four CLIP demo runs, one at a time (each run only if its folder has no results), on one
    thread: on a shared 2-core machine two threads each ran several times slower."""
    for name, command in VARIANTS.items():
        if not (folder / name / "results.json").exists():
            _negmerge(*command.split()[1:], "--workdir", folder / name, env={"OMP_NUM_THREADS": "1"})
    return folder


def draw(clip: Path | None, classifier: Path | None) -> None:
    from negmerge_cli.core import schema
    from negmerge_cli.demo.classifier import MODEL, classifier_panel
    from negmerge_cli.report.plots import save, search_curve, tradeoff_figure
    from negmerge_cli.results.files import SearchFile

    if clip is not None:
        _negmerge("report", clip, "--plot", IMAGES / "tradeoff.png", "--force", "--quiet")
        search = schema.read(clip / "search" / "negmerge.json", SearchFile).build()
        save(search_curve(search), IMAGES / "search-curve.png", force=True)
    if classifier is None:
        return
    full = _read(classifier / "results.json")
    panel = classifier_panel(full["curves"], full["rows"])
    save(tradeoff_figure([panel], f"{MODEL} on digits: forgetting class 3"), IMAGES / "classifier-tradeoff.png",
         force=True)


def main(argv=None) -> None:
    from negmerge_cli.core import files

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, help="a finished `negmerge demo --quick` folder (default: run one)")
    parser.add_argument("--classifier", type=Path, help="a finished classifier demo folder (default: run one)")
    parser.add_argument("--workdir", type=Path, default=Path("docs-runs"), help="where to run the demos")
    parser.add_argument("--variants", type=Path, help="a folder of the four CLIP demo runs (default: run them)")
    parser.add_argument("--only", choices=("clip", "classifier", "variants"),
                        help="redo one part, keep the others' records")
    args = parser.parse_args(argv)
    clip = None if args.only not in (None, "clip") else args.clip or _ensure(args.workdir / "clip")
    classifier = None if args.only not in (None, "classifier") else (
        args.classifier or _ensure(args.workdir / "classifier", "--scenario", "classifier"))
    variants = None if args.only not in (None, "variants") else _variants(args.variants or args.workdir / "variants")
    data = record(clip, classifier, json.loads(RECORD.read_text()) if RECORD.exists() else {}, variants)
    with files.operation():
        files.write_text(RECORD, json.dumps(data, indent=1) + "\n", force=True)
        draw(clip, classifier)
        regions = render(data)
        for doc in dict.fromkeys(REGIONS.values()):
            path = DOCS / doc
            own = {name: text for name, text in regions.items() if REGIONS[name] == doc}
            if not own:
                continue
            text = path.read_text()
            new = rewrite(text, own, doc)
            if new != text:
                files.write_text(path, new, force=True)
    print(f"wrote {RECORD.relative_to(DOCS.parent)}, docs/images/*.png and the generated regions of "
          f"{', '.join(dict.fromkeys(REGIONS.values()))}")


if __name__ == "__main__":
    main()
