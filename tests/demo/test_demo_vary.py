"""`negmerge demo --vary`: what the CLIP demo's k fine-tunes differ in (their seed, or their
hyperparameters at one seed), checked on the plan without training; and the task vectors'
agreement the demo records, against a dense computation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import assert_clean_failure
from safetensors.torch import load_file, save_file

from negmerge_cli.core.errors import UsageError
from negmerge_cli.demo.agreement import vector_agreement
from negmerge_cli.demo.pipeline import DemoSettings
from negmerge_cli.results import DemoResults
from negmerge_cli.training.sweep import expand_grid


def _points(settings: DemoSettings):
    """The fine-tunes ``finetune`` will train (weight decay: the CLIP family's default, as it fills in)."""
    return expand_grid(replace(settings.grid(), wd=[0.1]), seed_mode="shared")


@pytest.mark.parametrize("setting", [DemoSettings.quick, DemoSettings.full])
def test_the_variants_share_k_and_the_budget_and_differ_only_in_what_they_vary(setting):
    seeds, varied = setting("seeds"), setting("hyperparameters")
    assert setting() == seeds and varied.vary == "hyperparameters"
    plans = {"seeds": _points(seeds), "hyperparameters": _points(varied)}
    assert len(plans["seeds"]) == len(plans["hyperparameters"]) == seeds.k == varied.k
    for name, points in plans.items():  # the budget: training steps of all k together
        assert sum(p.steps for p in points) == seeds.total_steps == varied.total_steps, name
    # seeds: one lr and step count, k distinct seeds, each trained with that very seed
    assert {(p.lr, p.steps) for p in plans["seeds"]} == {(seeds.lr[0], seeds.steps[0])}
    assert sorted(p.train_seed for p in plans["seeds"]) == list(range(seeds.k))
    # hyperparameters: k distinct (lr, steps), one seed and one data order
    assert len({(p.lr, p.steps) for p in plans["hyperparameters"]}) == varied.k
    assert {p.train_seed for p in plans["hyperparameters"]} == {0}
    assert len({p.lr for p in plans["hyperparameters"]}) == 3
    for key in ("wd", "label_smoothing", "randaug"):  # everything else equal
        assert len({getattr(p, key) for plan in plans.values() for p in plan}) == 1, key
    assert varied.to_json()["vary"] == "hyperparameters" and varied.to_json()["total_steps"] == seeds.total_steps


def test_results_record_the_variant_and_older_files_read_as_seeds():
    from negmerge_cli.results.files import DemoFile

    outcome = {"lambda": 0.5, "forget": 0.2, "retain": 0.9, "feasible": True}
    data = {"task": "demo", "model": "m", "forget_dataset": "digits", "retain_dataset": "textures", "threshold": 0.95,
            "k": 3, "start": {"forget": 0.7, "retain": 1.0}, "chance": {"forget": 0.1, "retain": 0.125},
            "methods": {"mean": outcome}, "matched": {"coefs": [0.0, 1.0], "methods": {"mean": outcome}}}
    assert DemoFile.model_validate(data).build().vary == "seeds"
    data["settings"] = DemoSettings.quick("hyperparameters").to_json()
    results = DemoFile.model_validate(data).build()
    assert results.vary == "hyperparameters"
    assert isinstance(results, DemoResults) and results.to_json()["settings"]["lr"] == [5e-4, 1e-3, 2e-3]


def test_an_unknown_variant_is_refused(cli, tmp_path):
    with pytest.raises(UsageError, match="vary"):
        DemoSettings.quick("lr")
    assert_clean_failure(cli("demo", "--quick", "--vary", "lr", "-w", tmp_path / "d"), "--vary", "seeds")
    assert_clean_failure(cli("demo", "--scenario", "classifier", "--vary", "seeds", "-w", tmp_path / "c"),
                         "--vary", "--scenario")
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_vector_agreement_against_a_dense_computation(tmp_path):
    generator = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (7, 5), "b.bias": (5,)}
    vectors = []
    for index in range(3):
        state = {name: torch.randn(shape, generator=generator) + 0.8 for name, shape in shapes.items()}
        state["a.weight"][0, :2] = 0  # unchanged by every fine-tune: not counted
        if index == 1:
            state["b.bias"][0] = 0  # one zero: no agreement there
        state["ids"] = torch.arange(4)  # not a float tensor: not part of the vectors
        vectors.append(tmp_path / f"v{index}.safetensors")
        save_file(state, str(vectors[-1]))
    merged = tmp_path / "m.safetensors"
    save_file({"a.weight": 2 * torch.ones(shapes["a.weight"])}, str(merged))  # b.bias all zero: left out

    found = vector_agreement(vectors, {"m": merged})

    flat = []  # every float element of each vector, in name order, as plain Python floats
    for path in vectors:
        state = load_file(str(path))
        flat.append([float(x) for name in sorted(shapes) for x in state[name].reshape(-1)])
    norms = [sum(x * x for x in row) ** 0.5 for row in flat]
    assert found["norms"] == pytest.approx(norms)
    cosines = [sum(a * b for a, b in zip(flat[i], flat[j])) / (norms[i] * norms[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert found["cosine_min"] == pytest.approx(min(cosines)) and found["cosine_mean"] == pytest.approx(sum(cosines) / 3)
    columns = list(zip(*flat))
    changed = [c for c in columns if any(c)]
    agreed = [c for c in changed if all(x > 0 for x in c) or all(x < 0 for x in c)]
    assert len(changed) == 35 + 5 - 2 and found["sign_agreement"] == pytest.approx(len(agreed) / len(changed))
    mean = [sum(c) / 3 for c in columns]
    merged_row = [2.0] * 35 + [0.0] * 5  # name order: a.weight, then b.bias
    assert found["merged"]["m"]["norm"] == pytest.approx(2 * 35 ** 0.5)
    dot = sum(a * b for a, b in zip(merged_row, mean))
    assert found["merged"]["m"]["cosine_to_mean"] == pytest.approx(dot / (2 * 35 ** 0.5 * sum(x * x for x in mean) ** 0.5))
