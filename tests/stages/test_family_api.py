"""Python callers get exactly what the CLI gives: ``negmerge_cli.stages.finetune`` and ``evaluate``
called for each model family with only the required arguments train the same tensors, record the
same hyperparameters and measure the same numbers as ``negmerge finetune`` / ``negmerge eval`` with
the same arguments (the family fills in its defaults in the library, never in the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow

# (model, data, what a sweep on the built-in digits needs besides model/data/output: a length)
FAMILIES = {
    "clip": ("negmerge-tiny", "digits"),
    "classifier": ("resnet8-cifar", "digits"),
}
STEPS = 2
TIMING = {"seconds", "images_per_s", "host", "pid"}


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def _without(value, keys=TIMING):
    """``value`` (parsed JSON) without the fields that time the run or name the process."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def sweeps(request, tmp_path_factory):
    """One sweep per family made through Python and one through the CLI, same required arguments."""
    from types import SimpleNamespace

    from negmerge_cli.cli.app import main
    from negmerge_cli.stages import FinetuneOptions, Grid, finetune

    model, data = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"family-{request.param}")
    library = finetune(FinetuneOptions(model, data, root / "library", grid=Grid(steps=[STEPS])))
    with pytest.raises(SystemExit) as exit:
        main(["finetune", "-m", model, "-d", data, "-o", str(root / "cli"), "--steps", str(STEPS), "-q"])
    assert exit.value.code in (0, None)
    return SimpleNamespace(family=request.param, model=model, data=data, root=root, library=library)


def test_finetune_from_python_equals_the_cli(sweeps):
    library, cli = sweeps.root / "library", sweeps.root / "cli"
    manifest = json.loads((cli / "manifest.json").read_text())
    assert _without(json.loads((library / "manifest.json").read_text())) == _without(manifest)
    assert [p.name for p in sweeps.library.points] == [p["name"] for p in manifest["points"]]
    defaults = {"clip": (1e-5, 0.1), "classifier": (0.1, 5e-4)}[sweeps.family]
    hyper = manifest["points"][0]["hyperparameters"]
    assert (hyper["lr"], hyper["wd"]) == defaults  # the family's defaults, not the other family's
    for name in ["base.safetensors"] + [p["file"] for p in manifest["points"]]:
        (a, meta_a), (b, meta_b) = _tensors_and_metadata(library / name), _tensors_and_metadata(cli / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert _without(meta_a, {"negmerge.command", "negmerge.created"}) == \
            _without(meta_b, {"negmerge.command", "negmerge.created"}), name


def test_evaluate_from_python_equals_the_cli(sweeps, cli, tmp_path):
    from negmerge_cli.stages import EvalOptions, evaluate

    checkpoint = sweeps.root / "library" / "base.safetensors"
    extra, library_kwargs = [], {}
    if sweeps.family == "classifier":
        from negmerge_cli.classifier.data import open_classifier_data
        from negmerge_cli.classifier.split import make_forget_split
        from negmerge_cli.core import files

        with files.operation():
            make_forget_split(open_classifier_data(sweeps.data), classes=[3]).save(tmp_path / "forget.json")
        extra, library_kwargs = ["--forget-split", tmp_path / "forget.json"], {"forget_split": str(tmp_path / "forget.json")}
    found = evaluate([sweeps.data], EvalOptions(sweeps.model, checkpoint=str(checkpoint), **library_kwargs))
    result = cli("eval", "-m", sweeps.model, "-c", checkpoint, "-d", sweeps.data, *extra, "-q")
    assert result.returncode == 0, result.stderr
    library = [r.to_json() for r in found] if isinstance(found, list) else found.to_json()
    assert _without(library) == _without(json.loads(result.stdout))
