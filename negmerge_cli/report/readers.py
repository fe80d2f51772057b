"""Reading the JSON the tool writes into report rows, through the typed results.

What a PATH may be:

- a CLIP model's ``eval --vector --json`` (a search): the chosen lambda and its Val accuracies, and
  the curve;
- a CLIP model's ``eval --json`` (a list of zero-shot results): test accuracies of one model, forget
  set first (or the one not named ``imagenet``), then the retain set;
- a classifier's ``eval --json`` and ``eval --vector --json`` (its search), and the classifier
  demo's ``results.json``: :mod:`negmerge_cli.report.classifier_results`;
- a demo folder (``results.json``, and the searches it names), of either demo;
- a method folder of the reproduction layout (``search.json``, ``test.json``, ``inspect.json``,
  ``choice.json``: the method is the folder's name), or a folder holding method folders one or two
  levels down (``OUT/DS/<method>``, ``OUT``); the per-vector searches under ``single/`` are the
  best-single baseline's candidates, not rows.

A method's row takes test accuracies where an eval result is there, else the search's Val ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from negmerge_cli.core.errors import UsageError
from negmerge_cli.report import classifier_results as classifier
from negmerge_cli.report.rows import HEADLINE, HEADLINE_TITLE, Curve, Found, ResultRow
from negmerge_cli.results import (
    CLASSIFIER_EVAL_TASK,
    CLASSIFIER_SEARCH_TASK,
    DEMO_TASK,
    SEARCH_TASK,
    ZEROSHOT_TASK,
    DatasetEvaluation,
    DemoResults,
    Outcome,
    SearchResult,
)

SPLITS = ("train", "val", "test")
GENERIC_STEMS = {"search", "test", "results", "eval", "result"}  # the Makefile's names: the folder names the method
METHOD_FILES = ("search.json", "test.json", "eval.json")  # eval.json: the classifier reproduction's
SKIPPED_FOLDERS = {"single"}  # OUT/DS/single/<point>/: the best single vector's candidates
RETAIN_KIND = "imagenet"  # the paper's retain set
MALFORMED = "not a negmerge result"  # a file that is not valid JSON, or one of our kinds with a field wrong
NOT_OURS = f"{MALFORMED} (expected eval --json, eval --vector --json, a demo or reproduction folder)"
MATCHED = "matched_retain"  # the CLIP demo's second setting, as CSV and JSON name it


def read_path(path: Path) -> Found:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    return _read_folder(path) if path.is_dir() else _read_file(path)


def dataset_name(label: str) -> str:
    """``cars:/data:val`` -> ``cars``; ``/runs/data/digits:test`` -> ``digits``; ``digits`` -> ``digits``."""
    head, _, tail = label.rpartition(":")
    body = head if head and tail in SPLITS else label
    kind, sep, _ = body.partition(":")
    if sep and kind and "/" not in kind and "\\" not in kind:
        return kind.lower()  # NAME:ROOT
    return Path(body).name or body


def short_label(label: str) -> str:
    """A dataset label without its root folder: ``cars:/data:val`` -> ``cars:val``."""
    split = label.rpartition(":")[2]
    return f"{dataset_name(label)}:{split}" if split in SPLITS and ":" in label else dataset_name(label)


# -- files ---------------------------------------------------------------------------------------


def load_json(path: Path):
    """A result file, strictly parsed (negmerge_cli.core.schema.load); :func:`_typed` checks its fields."""
    from negmerge_cli.core import schema as schemas

    return schemas.load(path, error=UsageError, what="a result file", where=f"{path}: {MALFORMED}")


def kind_of(data) -> Optional[str]:
    if isinstance(data, dict):
        task = data.get("task")
        if task in (SEARCH_TASK, DEMO_TASK, CLASSIFIER_EVAL_TASK, CLASSIFIER_SEARCH_TASK):
            return task
        if data.get("scenario") == "classifier" and "rows" in data:
            return classifier.CLASSIFIER_DEMO
        if "tensors" in data and "nonzero_fraction" in data:
            return "inspect"
        if "chosen" in data and "candidates" in data:
            return "choice"
    if isinstance(data, list) and any(isinstance(e, dict) and e.get("task") == ZEROSHOT_TASK for e in data):
        return ZEROSHOT_TASK
    return None


def _typed(path: Path, data, kind: str):
    """``data`` (of kind ``kind``) checked against its file's schema and built into its typed result
    (inspect and choice files: the checked fields), or one line naming the field at fault."""
    from negmerge_cli.core import schema as schemas
    from negmerge_cli.results import classifier_search_file, files

    schema = {SEARCH_TASK: files.SearchFile, ZEROSHOT_TASK: list[files.ZeroshotEvaluationFile],
              DEMO_TASK: files.DemoFile, CLASSIFIER_EVAL_TASK: files.ClassifierEvaluationFile,
              CLASSIFIER_SEARCH_TASK: classifier_search_file.ClassifierSearchFile, classifier.CLASSIFIER_DEMO: classifier.ClassifierDemoFile,
              "inspect": files.InspectFile, "choice": files.ChoiceFile}[kind]
    found = schemas.validate(schema, data, f"{path}: {MALFORMED}", UsageError)
    if kind == ZEROSHOT_TASK:
        return [entry.build() for entry in found]
    return found if kind in ("inspect", "choice", classifier.CLASSIFIER_DEMO) else found.build()


def _read_file(path: Path) -> Found:
    data = load_json(path)
    kind = kind_of(data)
    method = _label(path)
    if kind in ("inspect", "choice"):
        raise UsageError(f"{path}: holds no accuracies; give the method folder that holds it")
    if kind is None:
        raise UsageError(f"{path}: {NOT_OURS}")
    typed = _typed(path, data, kind)
    if kind == SEARCH_TASK:
        return _from_search(path, typed, method)
    if kind == ZEROSHOT_TASK:
        return _from_evals(path, typed, method)
    if kind == DEMO_TASK:
        return _from_demo(path, typed)
    if kind == classifier.CLASSIFIER_DEMO:
        return classifier.from_demo(path, typed, lambda search: _expect(search, CLASSIFIER_SEARCH_TASK))
    if kind == CLASSIFIER_SEARCH_TASK:
        return classifier.from_search(path, typed, method)
    return classifier.from_evaluation(path, typed, method)


def _label(path: Path) -> str:
    stem = path.stem
    return path.resolve().parent.name if stem in GENERIC_STEMS else stem


def _from_search(path: Path, result: SearchResult, method: str, setting: str = "") -> Found:
    dataset = dataset_name(result.forget)
    chosen = result.chosen
    row = ResultRow(method, dataset, chosen.forget if chosen else None, chosen.retain if chosen else None,
                    split="val", coef=chosen.coef if chosen else None, setting=setting, sources=(str(path),))
    return Found([row], [Curve(method, dataset, result, setting)], [result.model], [dataset_name(result.retain)])


def _from_evals(path: Path, evaluations: list[DatasetEvaluation], method: str,
                search: Optional[SearchResult] = None) -> Found:
    forget, retain = _forget_and_retain(path, evaluations, search)
    extra = {k: v for e in evaluations for k, v in e.extra_metrics.items()}
    row = ResultRow(method, dataset_name(forget.dataset), forget.metrics.acc1,
                    retain.metrics.acc1 if retain else None, metrics=extra, sources=(str(path),))
    return Found([row], [], [forget.model], [dataset_name(retain.dataset)] if retain else [])


def _forget_and_retain(path: Path, evaluations: list[DatasetEvaluation], search: Optional[SearchResult]):
    names = [dataset_name(e.dataset) for e in evaluations]
    if search is not None:
        wanted = dataset_name(search.forget), dataset_name(search.retain)
        found = [next((e for e, n in zip(evaluations, names) if n == w), None) for w in wanted]
        if found[0] is None:
            raise UsageError(f"{path}: no result for the search's forget set {wanted[0]} (has {', '.join(names)})")
        return found[0], found[1]
    if len(evaluations) > 2:
        raise UsageError(f"{path}: {len(evaluations)} datasets; a row needs the forget set then the retain set")
    retain_index = names.index(RETAIN_KIND) if RETAIN_KIND in names else (1 if len(evaluations) == 2 else None)
    forget = next(e for i, e in enumerate(evaluations) if i != retain_index)
    return forget, evaluations[retain_index] if retain_index is not None else None


# -- folders -------------------------------------------------------------------------------------


def _read_folder(folder: Path) -> Found:
    if (folder / "results.json").is_file():
        return _read_file(folder / "results.json")
    if _is_method_folder(folder):
        return _read_method_folder(folder)
    found = Found()
    for method_folder in _method_folders(folder):
        found.add(_read_method_folder(method_folder))
    if not found.rows:
        raise UsageError(f"{folder}: no results found (no results.json, and no method folder with "
                         f"{' or '.join(METHOD_FILES)} one or two levels down)")
    return found


def _is_method_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in METHOD_FILES)


def _method_folders(folder: Path) -> list[Path]:
    found = []
    for child in _subfolders(folder):
        if _is_method_folder(child):
            found.append(child)
        else:
            found += [grandchild for grandchild in _subfolders(child) if _is_method_folder(grandchild)]
    return found


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in SKIPPED_FOLDERS)


def _read_method_folder(folder: Path) -> Found:
    """``search.json`` (lambda, Val), ``test.json`` (test), ``inspect.json`` (kept), ``choice.json``;
    or the classifier reproduction's ``eval.json`` (its metrics against the retrained model)."""
    method, found = folder.name, Found()
    if (folder / "eval.json").is_file():
        found.add(_read_file(folder / "eval.json"))
    search = None
    if (folder / "search.json").is_file():
        path = folder / "search.json"
        data = load_json(path)
        if kind_of(data) == CLASSIFIER_SEARCH_TASK:
            found.add(classifier.from_search(path, _typed(path, data, CLASSIFIER_SEARCH_TASK), method))
        else:
            search = _expect(path, SEARCH_TASK)
            found.add(_from_search(path, search, method))
    if (folder / "test.json").is_file():
        path = folder / "test.json"
        found.add(_from_evals(path, _expect(path, ZEROSHOT_TASK), method, search))
    rows: dict[tuple, ResultRow] = {}
    for other in found.rows:
        if other.dataset != found.rows[0].dataset:
            _mismatch(folder, found.rows[0], other)
        rows[other.key] = rows[other.key].merged(other) if other.key in rows else other
    return Found([_with_inspection(folder, row) for row in rows.values()], found.curves, found.models, found.retain,
                 found.titles)


def _mismatch(folder: Path, row: ResultRow, other: ResultRow):
    raise UsageError(f"{folder}: search.json is about {row.dataset} but test.json about {other.dataset}")


_KIND_NAMES = {SEARCH_TASK: NOT_OURS, ZEROSHOT_TASK: NOT_OURS, CLASSIFIER_SEARCH_TASK: NOT_OURS,
               "inspect": "not a negmerge inspect --json result", "choice": "not a best-single choice"}


def _expect(path: Path, kind: str):
    """The file at ``path``, which must hold a result of kind ``kind``, checked against its schema."""
    data = load_json(path)
    if kind_of(data) != kind:
        raise UsageError(f"{path}: {_KIND_NAMES[kind]}")
    return _typed(path, data, kind)


def _with_inspection(folder: Path, row: ResultRow) -> ResultRow:
    from dataclasses import replace

    updates = {}
    if (folder / "inspect.json").is_file():
        updates["nonzero"] = _expect(folder / "inspect.json", "inspect").nonzero_fraction
    if (folder / "choice.json").is_file():
        updates["vector"] = _expect(folder / "choice.json", "choice").chosen.name
    return replace(row, **updates) if updates else row


# -- the demo ------------------------------------------------------------------------------------


def _from_demo(path: Path, results: DemoResults) -> Found:
    folder = path.parent
    # the titles say what the k fine-tunes differ in (the demo's --vary), so two runs read apart
    varied = f"; the {results.k} fine-tunes vary {results.vary}"
    found = Found(models=[results.model], retain=[results.retain_dataset],
                  titles={HEADLINE: HEADLINE_TITLE + varied, MATCHED: results.matched_label + varied})
    dataset = results.forget_dataset
    for setting, outcomes in ((None, results.methods), (MATCHED, results.matched)):
        found.rows.append(ResultRow("pretrained", dataset, results.start.forget, results.start.retain,
                                    setting=setting or "", sources=(str(path),)))
        for method, outcome in outcomes.items():
            found.rows.append(_outcome_row(path, method, dataset, outcome, setting or ""))
            if outcome.search:
                search_path = folder / outcome.search
                search = _expect(search_path, SEARCH_TASK)
                found.curves.append(Curve(method, dataset, search, setting or ""))
    return found


def _outcome_row(path: Path, method: str, dataset: str, outcome: Outcome, setting: str) -> ResultRow:
    return ResultRow(method, dataset, outcome.forget, outcome.retain, coef=outcome.coef if outcome.feasible else None,
                     nonzero=outcome.nonzero_fraction, kept=outcome.kept_fraction, setting=setting, vector=outcome.vector,
                     sources=(str(path),))
