"""Hostile JSON and patterns from input files, through the real CLI.

JSON files: every JSON file the tool reads (the forget split, ``eval --reference``, the files
``report`` reads, ``--base-retain``, PEFT adapter configs, a sweep's sweep.json and records) is a
real file written by the real command (or by PEFT, or in the released code's format), then corrupted
one way per row: deep nesting, a huge integer, NaN/Infinity, a number too large for a float, a list
where an object belongs, a string where a number belongs, a non-integer index (2.5, 2.0, true); the
forget split also with indices out of range, negative and repeated. Every row must be refused with
one line naming the file and the field, and change nothing (tests/hostile.py's checks).

Patterns: a PEFT ``rank_pattern`` key that makes Python's re backtrack for hours is matched by RE2
in linear time: a real subprocess under a timeout (SIGALRM cannot interrupt re's C loop) must give
PEFT's own deltas; patterns RE2 cannot match are refused in one line naming the file and pattern.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from clip_helpers import TINY
from helpers import run_cli
from hostile import Workspace, assert_refused
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")

POINT = "lr1e-05_st1_wd0.1_ls0_seed0_noaug"  # the one grid point of the kit's sweep
CLASSIFIER = "resnet8-cifar"
RUNS = "a" * 40  # module names with long runs of one letter: where (a+)+$ backtracks


# -- the real files, made once ------------------------------------------------------------------


class Runs(torch.nn.Module):
    """Two linear layers named ``layers.aaa…a`` and ``layers.aaa…ab``: "(a+)+$" matches the first,
    and Python's re needs about 2^40 steps to find that it does not match the second."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleDict({RUNS: torch.nn.Linear(6, 5), RUNS + "b": torch.nn.Linear(6, 4)})


def _adapter(folder: Path, seed: int = 0, **lora) -> Path:
    """A real PEFT adapter of :class:`Runs` (B made non-zero: PEFT starts it at zero)."""
    torch.manual_seed(seed)
    model = peft.get_peft_model(Runs(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=[RUNS, RUNS + "b"], **lora))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape) * 0.1)
    model.save_pretrained(folder)
    return folder


def _cli(*args: object) -> None:
    from negmerge_cli.cli.app import run

    assert run([str(a) for a in args]) == 0, args


@pytest.fixture(scope="session")
def kits(originals, tmp_path_factory) -> Path:
    """Each JSON input as its writer leaves it: ``clip/`` (a search, an eval list, inspect and
    best-single files in a method folder, a demo folder, stored accuracies), ``classifier/`` (a
    forget split, the model and its eval JSON), ``lora/`` (a base and a PEFT adapter), ``sweep/``
    (a finished one-point finetune sweep of ``shapes/``)."""
    from negmerge_cli.checkpoint import save_state_dict
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.models import architecture_metadata, create_classifier
    from negmerge_cli.classifier.split import make_forget_split
    from negmerge_cli.core import files
    from negmerge_cli.results import Accuracies, DemoResults, Outcome
    from negmerge_cli.stages import inspect_checkpoint

    root = tmp_path_factory.mktemp("json-kits")
    base, tau = originals / "base.safetensors", originals / "tau.safetensors"
    shapes = shutil.copytree(originals / "shapes", root / "shapes")
    method = root / "clip" / "negmerge"
    method.mkdir(parents=True)
    common = ["-m", TINY, "-c", base, "-j", "0", "-b", "8", "-q"]
    _cli("eval", *common, "--vector", tau, "--forget", shapes, "--retain", shapes, "--coefs", "0,1",
         "--json", method / "search.json")
    _cli("eval", *common, "-d", shapes, "--json", root / "clip" / "test.json")
    best = root / "best"
    script = Path(__file__).resolve().parents[2] / "docs" / "reproduce" / "best_single.py"
    subprocess.run([sys.executable, script, "--out-dir", best, method], check=True, capture_output=True)
    shutil.copy(best / "choice.json", method / "choice.json")
    demo = root / "clip" / "demo"
    (demo / "searches").mkdir(parents=True)
    shutil.copy(method / "search.json", demo / "searches" / "negmerge.json")
    outcome = Outcome(1.0, 0.25, 0.75, val_forget=0.5, val_retain=1.0, search="searches/negmerge.json",
                      nonzero_fraction=0.5)
    results = DemoResults(TINY, "shapes", "shapes", 0.95, 3, Accuracies(1.0, 1.0), Accuracies(0.33, 0.33),
                          {"negmerge": outcome}, {"negmerge": outcome}, [0.0, 1.0])
    (root / "clip" / "accuracies.json").write_text(json.dumps({"ImageNetVal": 0.6666, "CarsVal": 0.5959}))

    classifier = root / "classifier"
    classifier.mkdir()
    torch.manual_seed(0)
    with files.operation():
        files.write_json(demo / "results.json", results.to_json())
        files.write_json(method / "inspect.json", inspect_checkpoint(tau).to_json())
        make_forget_split(open_classifier_data("digits"), classes=[3]).save(classifier / "forget.json")
        save_state_dict(create_classifier(CLASSIFIER, 10).state_dict(), classifier / "model.safetensors",
                        architecture_metadata(CLASSIFIER, 10))
    _cli("eval", "-m", CLASSIFIER, "-c", classifier / "model.safetensors", "--data", "digits", "--forget-split",
         classifier / "forget.json", "--device", "cpu", "-j", "0", "--json", classifier / "eval.json", "-q")

    torch.manual_seed(0)
    (root / "lora").mkdir()
    save_file(Runs().state_dict(), str(root / "lora" / "base.safetensors"))
    _adapter(root / "lora" / "adapter")

    _cli(*_finetune(root, root / "sweep"))
    return root


def _finetune(kits: Path, output: Path) -> list:
    return ["finetune", "-m", TINY, "-d", kits / "shapes", "-o", output, "--steps", "1", "-b", "4", "-j", "0",
            "--warmup-steps", "0", "-q"]


# -- every JSON input, and a field of each kind in it --------------------------------------------


@dataclass(frozen=True)
class Input:
    """A JSON file a command reads (inside kit ``kit``), the command, and a field of each kind
    (``None``: the structure has no such field the tool reads); ``anywhere`` takes the parser's rows
    (deep nesting, huge numbers, NaN) where the schema reads no number."""

    kit: str
    file: str
    command: Callable[[Workspace, Path, Path], list]  # (workspace, the copied kit, kits) -> arguments
    obj: Optional[str]
    number: Optional[str]
    integer: Optional[str]
    anywhere: Optional[str] = None
    context: str = ""  # the option naming the file in the error line, when it has one

    @property
    def raw_field(self) -> str:
        return self.number or self.integer or self.anywhere or self.obj


def _classifier_eval(kit: Path, *extra) -> list:
    return ["eval", "-m", CLASSIFIER, "-c", kit / "model.safetensors", "--data", "digits", "--device", "cpu",
            "-j", "0", "--forget-split", kit / "forget.json", *extra]


INPUTS = {
    "forget-split": Input("classifier", "forget.json", lambda w, k, _: _classifier_eval(k),
                          obj="dataset", number="fraction", integer="forget_indices[3]"),
    "eval-reference": Input("classifier", "eval.json", lambda w, k, _: _classifier_eval(
                            k, "--reference", k / "eval.json"), obj="metrics", number="metrics.df_acc",
                            integer="counts.df", context="--reference"),
    "report-classifier-eval": Input("classifier", "eval.json", lambda w, k, _: ["report", k / "eval.json"],
                                    obj="forget_split", number="metrics.dr_acc", integer="num_classes"),
    "report-search": Input("clip", "negmerge/search.json", lambda w, k, _: ["report", k / "negmerge/search.json"],
                           obj="base", number="base.retain_acc1", integer="base.n_forget_images"),
    "report-eval-list": Input("clip", "test.json", lambda w, k, _: ["report", k / "test.json"],
                              obj="[0].metrics", number="[0].metrics.acc1", integer="[0].n_images"),
    "report-demo": Input("clip", "demo/results.json", lambda w, k, _: ["report", k / "demo"],
                         obj="start", number="methods.negmerge.forget", integer="k"),
    "report-inspect": Input("clip", "negmerge/inspect.json", lambda w, k, _: ["report", k / "negmerge"],
                            obj=None, number="nonzero_fraction", integer=None),
    "report-choice": Input("clip", "negmerge/choice.json", lambda w, k, _: ["report", k / "negmerge"],
                           obj="chosen", number=None, integer=None, anywhere="chosen.lambda"),
    "base-retain-accuracies": Input("clip", "accuracies.json", lambda w, k, _: w.search(
                                    "--base-retain", f"{k / 'accuracies.json'}:ImageNetVal"),
                                    obj=None, number="CarsVal", integer=None, context="--base-retain"),
    "base-retain-eval-list": Input("clip", "test.json", lambda w, k, _: w.search("--base-retain", k / "test.json"),
                                   obj="[0].metrics", number="[0].metrics.acc1", integer=None,
                                   context="--base-retain"),
    "adapter-config": Input("lora", "adapter/adapter_config.json", lambda w, k, _: [
                            "vector", "--base", k / "base.safetensors", k / "adapter", "-o", w.out / "v.safetensors"],
                            obj="rank_pattern", number="lora_alpha", integer="r"),
    "sweep-json": Input("sweep", "sweep.json", lambda w, k, kits: _finetune(kits, k),
                        obj="identity", number="base.val.acc1", integer=None),
    "sweep-record": Input("sweep", f".records/{POINT}.json", lambda w, k, kits: _finetune(kits, k),
                          obj="hyperparameters", number="val.acc1", integer="index"),
}


# name -> (which field of the input, the JSON put there, what the error line says besides the file)
MUTATIONS: dict[str, tuple[str, str, Callable[[str], list[str]]]] = {
    "deep-nesting": ("raw_field", "[" * 100_000 + "]" * 100_000, lambda f: ["nested too deeply"]),
    "huge-integer": ("raw_field", "9" * 400, lambda f: ["an integer of 400 digits"]),
    "nan": ("raw_field", "NaN", lambda f: ["NaN is not a JSON value"]),
    "infinity": ("raw_field", "-Infinity", lambda f: ["-Infinity is not a JSON value"]),
    "float-overflow": ("raw_field", "1e999", lambda f: ["too large for a float", "1e999"]),
    "list-for-object": ("obj", "[1]", lambda f: [f"field '{f}': expected a JSON object, got [1]"]),
    "string-for-number": ("number", '"0.5"', lambda f: [f"field '{f}': expected a number, got '0.5'"]),
    "index-2.5": ("integer", "2.5", lambda f: [f"field '{f}': expected an integer, got 2.5"]),
    "index-2.0": ("integer", "2.0", lambda f: [f"field '{f}': expected an integer, got 2.0"]),
    "index-true": ("integer", "true", lambda f: [f"field '{f}': expected an integer, got true"]),
}

# rows of one input only: (input, field, the JSON put there, what the error line says besides the file)
EXTRA = {
    "forget-split-index-out-of-range": ("forget-split", "forget_indices[3]", "1438",
                                        ["field 'forget_indices[3]': 1438 is outside the training set (0..1437)"]),
    "forget-split-index-negative": ("forget-split", "forget_indices[3]", "-1",
                                    ["field 'forget_indices[3]': -1 is outside the training set"]),
    "forget-split-index-repeated": ("forget-split", "forget_indices[3]", "@2",
                                    ["field 'forget_indices[3]':", "repeats the index before it"]),
    "forget-split-index-unsorted": ("forget-split", "forget_indices[3]", "@0",
                                    ["field 'forget_indices[3]':", "(the indices must be sorted)"]),
    "forget-split-empty": ("forget-split", "forget_indices", "[]", ["field 'forget_indices': is empty"]),
    "forget-split-class-out-of-range": ("forget-split", "classes[0]", "10", ["field 'classes[0]': class 10 does not"]),
    "report-demo-search-outside-the-folder": ("report-demo", "methods.negmerge.search", '"../negmerge/search.json"',
                                              ["field 'methods.negmerge.search'", "not a path inside"]),
    "eval-reference-metric-above-one": ("eval-reference", "metrics.df_acc", "1.5",
                                        ["field 'metrics.df_acc': must be <= 1, got 1.5"]),
    "sweep-record-unknown-status": ("sweep-record", "status", '"finished"', ["field 'status'", "'finished'"]),
    # rank_pattern keys: patterns RE2 cannot match, or that Python's re and RE2 read differently
    "adapter-pattern-backreference": ("adapter-config", "rank_pattern", '{"(a)\\\\1": 2}',
                                      ["field 'rank_pattern['(a)\\\\1']'", "cannot be matched by RE2"]),
    "adapter-pattern-lookahead": ("adapter-config", "alpha_pattern", '{"(?=a)a": 2}',
                                  ["field 'alpha_pattern['(?=a)a']'", "cannot be matched by RE2"]),
    "adapter-pattern-open-repeat": ("adapter-config", "rank_pattern", '{"a{,3}": 2}',
                                    ["field 'rank_pattern['a{,3}']'", "read differently"]),
    "adapter-pattern-invalid": ("adapter-config", "rank_pattern", '{"(a": 2}',
                                ["field 'rank_pattern['(a']'", "not a valid pattern"]),
}


def _path(field: str) -> list:
    """``a.b[3]`` -> ``['a', 'b', 3]``."""
    return [int(index) if index else name for index, name in re.findall(r"\[(\d+)\]|([^.\[\]]+)", field)]


def _corrupt(file: Path, field: str, raw: str) -> None:
    """Put the JSON text ``raw`` at ``field`` of the file (``@N``: the value at index N of the
    same list), the rest of the document as its writer left it."""
    document = json.loads(file.read_text())
    *parents, last = _path(field)
    holder = document
    for key in parents:
        holder = holder[key]
    if raw.startswith("@"):
        raw = json.dumps(holder[int(raw[1:])])
    holder[last] = "@@HOSTILE@@"
    file.write_text(json.dumps(document, indent=1).replace('"@@HOSTILE@@"', raw))


def _row(case: str) -> tuple[str, str, str, list[str]]:
    """(input, field, raw JSON, fragments) of a row."""
    if case in EXTRA:
        return EXTRA[case]
    name, mutation = case.split(":")
    which, raw, says = MUTATIONS[mutation]
    field = getattr(INPUTS[name], which)
    return name, field, raw, says(field)


ROWS = [f"{name}:{mutation}" for name, spec in INPUTS.items() for mutation, (which, _, _) in MUTATIONS.items()
        if getattr(spec, which) is not None] + list(EXTRA)


@pytest.mark.parametrize("case", ROWS)
def test_hostile_json_is_refused_in_one_line_naming_the_file_and_field(case, ws, cli, kits):
    name, field, raw, fragments = _row(case)
    spec = INPUTS[name]

    def build(w: Workspace):
        kit = shutil.copytree(kits / spec.kit, w.root / spec.kit, symlinks=True)
        _corrupt(kit / spec.file, field, raw)
        named = f"{spec.context} {kit / spec.file}" if spec.context else str(kit / spec.file)
        return spec.command(w, kit, kits), [named, *fragments]

    assert_refused(ws, cli, build)


def test_every_input_is_read_as_its_writer_left_it(ws, cli, kits):
    """The rows' files uncorrupted are accepted by the same readers (so each row fails for its
    corruption alone), and the tool's readers accept what its writers write."""
    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.eval_run import read_evaluation
    from negmerge_cli.classifier.split import load_forget_split
    from negmerge_cli.clip.eval_run import stored_base_retain
    from negmerge_cli.training.sweep import read_manifest

    for name in ("report-classifier-eval", "report-search", "report-eval-list", "report-demo", "report-inspect",
                 "adapter-config"):
        kit = ws.root / INPUTS[name].kit
        if not kit.exists():
            shutil.copytree(kits / INPUTS[name].kit, kit, symlinks=True)
        result = cli(*INPUTS[name].command(ws, kit, kits))
        assert result.returncode == 0, (name, result.stderr)
    classifier, clip = kits / "classifier", kits / "clip"
    split = load_forget_split(classifier / "forget.json", open_classifier_data("digits"))
    assert read_evaluation(classifier / "eval.json").counts["df"] == len(split.forget_indices) > 0
    assert stored_base_retain(f"{clip / 'accuracies.json'}:ImageNetVal", "x")[0] == 0.6666
    assert stored_base_retain(str(clip / "test.json"), "x")[0] == json.loads((clip / "test.json").read_text())[0][
        "metrics"]["acc1"]
    manifest = read_manifest(kits / "sweep")
    assert [(p.name, p.status) for p in manifest.points] == [(POINT, "done")] and manifest.base_val is not None


# -- rank_pattern keys matched in linear time, with PEFT's rule ----------------------------------


def _peft_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """Every module's delta as PEFT itself computes it (get_delta_weight), under the base's names."""
    torch.manual_seed(0)
    model = peft.PeftModel.from_pretrained(Runs(), adapter)
    return {name.removeprefix("base_model.model.") + ".weight": module.get_delta_weight("default")
            for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)}


def test_a_pathological_pattern_key_is_matched_in_linear_time_with_peft_ranks(kits, tmp_path, cli):
    """rank_pattern {"aaa…a": 2} and alpha_pattern {"a+b": 16}, as PEFT made the adapter, give PEFT's
    own deltas; the same adapter with the rank key written "(a+)+$" (the same modules match) gives
    the same file, in seconds, where Python's re would backtrack about 2^40 steps on layers.aaa…ab."""
    adapter = _adapter(tmp_path / "adapter", seed=1, rank_pattern={RUNS: 2}, alpha_pattern={"a+b": 16})
    base = kits / "lora" / "base.safetensors"
    expected = _peft_deltas(adapter)
    assert {name: delta.shape[0] for name, delta in expected.items()} == {f"layers.{RUNS}.weight": 5,
                                                                          f"layers.{RUNS}b.weight": 4}
    result = cli("vector", "--base", base, adapter, "-o", tmp_path / "plain.safetensors")
    assert result.returncode == 0, result.stderr
    plain = load_file(str(tmp_path / "plain.safetensors"))
    assert sorted(plain) == sorted(expected)
    for name, delta in expected.items():
        assert torch.allclose(plain[name], delta, rtol=0, atol=1e-7), name

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {RUNS: 2}
    config["rank_pattern"] = {"(a+)+$": 2}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run_cli("vector", "--base", base, adapter, "-o", tmp_path / "hostile.safetensors", timeout=60)
    assert result.returncode == 0, result.stderr
    hostile = load_file(str(tmp_path / "hostile.safetensors"))
    assert all(torch.equal(hostile[name], plain[name]) for name in plain)


PATTERNS = ["q_proj", r".*\.q_proj", r"layers\.[0-3]\.self_attn\.q_proj", "layers.1.self_attn.q_proj", "proj", "a+b",
            "(q|v)_proj", "^model.*", "q_proj$", r"\d+\.mlp", r"model\.layers\.1\..*", "x|q_proj", "", "layers.1",
            "a)|(model", r"\bq_proj", r"[^.]+_proj", "(?:v|q)_proj{1,2}", r"\w+\.\w+", "(a+)+$"]
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.12.mlp.up_proj",
           "q_proj", "xq_proj", "aab", "layers.aab", "model.layers.1", "model.x", "q_projj", "layers." + RUNS]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_match_the_modules_peft_matches(pattern):
    """RE2 with the rule written for it picks the same key as PEFT's own get_pattern_key (Python's
    re), for patterns of every kind a config holds (names, classes, alternation, anchors, a key
    that closes PEFT's group) on names where re answers quickly."""
    from peft.utils.other import get_pattern_key

    from negmerge_cli.checkpoint.adapter_config import _pattern_key

    for module in MODULES:
        assert _pattern_key({pattern: 1}, module) == get_pattern_key([pattern], module), module
