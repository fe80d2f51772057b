"""Every merge method against a dense reference, through real files and the streaming engine."""

from __future__ import annotations

from pathlib import Path

import dense_reference as ref
import pytest
import torch
from helpers import make_vectors
from safetensors.torch import load_file

from negmerge_cli.arithmetic.methods import REGISTRY, create_method
from negmerge_cli.arithmetic.methods.dare import keep_mask
from negmerge_cli.arithmetic.methods.ties import kth_smallest_magnitude
from negmerge_cli.core.errors import UsageError
from negmerge_cli.stages import StreamOptions, merge_vectors

# Budgets: whole tensors per slice, and a tiny one that forces many slices per tensor.
BUDGETS = ["1GB", "160KB"]


def load_all(paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(p)) for p in paths]


def merged(vectors: list[Path], tmp_path: Path, method: str, budget: str = "1GB", **params) -> dict:
    out = tmp_path / f"{method}-{budget}.safetensors"
    merge_vectors(vectors, out, method, options=StreamOptions(device="cpu", max_memory=budget), **params)
    return load_file(str(out))


@pytest.mark.parametrize("budget", BUDGETS)
def test_negmerge_is_bit_exact(vectors, tmp_path, budget):
    taus = load_all(vectors)
    result = merged(vectors, tmp_path, "negmerge", budget)
    for name in taus[0]:
        expected = ref.negmerge([t[name] for t in taus])
        assert torch.equal(result[name], expected), name
    # the data is built to exercise the rule: some elements dropped, some kept
    kept = (result["w"] != 0).float().mean()
    assert 0.01 < kept < 0.5


def test_negmerge_drops_unchanged_elements(tmp_path):
    from safetensors.torch import save_file

    paths = []
    for index, values in enumerate([[1.0, 0.0, -2.0, 3.0], [2.0, 1.0, -1.0, -3.0], [3.0, 2.0, -3.0, 3.0]]):
        paths.append(tmp_path / f"t{index}.safetensors")
        save_file({"x": torch.tensor(values)}, str(paths[-1]))
    result = merged(paths, tmp_path, "negmerge")["x"]
    assert result.tolist() == [2.0, 0.0, -2.0, 0.0]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.25, 1.5]])
def test_sum_and_mean(vectors, tmp_path, budget, weights):
    taus = load_all(vectors)
    total = merged(vectors, tmp_path, "sum", budget, weights=weights)
    average = merged(vectors, tmp_path, "mean", budget, weights=weights)
    for name in taus[0]:
        column = [t[name] for t in taus]
        torch.testing.assert_close(total[name], ref.weighted_sum(column, weights), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(average[name], ref.mean(column, weights), rtol=1e-6, atol=1e-6)
    if weights is None:  # unweighted mean is the same sequential sum divided by k: exact
        assert torch.equal(average["w"], ref.sequential_sum([t["w"] for t in taus]) / len(taus))


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties(vectors, tmp_path, budget, density):
    taus = load_all(vectors)
    result = merged(vectors, tmp_path, "ties", budget, density=density)
    for name in taus[0]:
        torch.testing.assert_close(result[name], ref.ties([t[name] for t in taus], density), rtol=1e-6, atol=1e-6)


def test_ties_threshold_by_bisection_matches_kthvalue():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(10_000, generator=generator) * torch.randint(0, 3, (10_000,), generator=generator)
    ordered = torch.sort(values.abs()).values
    for rank in (2, 500, 5_000, 9_999, 10_000):
        whole = kth_smallest_magnitude(lambda: iter([values]), rank)
        sliced = kth_smallest_magnitude(lambda: iter(values.split(777)), rank)
        assert float(whole) == float(sliced) == float(ordered[rank - 1])
    assert kth_smallest_magnitude(lambda: iter([values]), 1) == 0.0  # rank 1: keep everything


@pytest.mark.parametrize("budget", BUDGETS)
def test_magmax(vectors, tmp_path, budget):
    taus = load_all(vectors)
    result = merged(vectors, tmp_path, "magmax", budget)
    for name in taus[0]:
        assert torch.equal(result[name], ref.magmax([t[name] for t in taus])), name


@pytest.mark.parametrize("budget", BUDGETS)
def test_dare(vectors, tmp_path, budget):
    taus = load_all(vectors)
    result = merged(vectors, tmp_path, "dare", budget, drop_rate=0.3, seed=7)
    for name in taus[0]:
        numel = taus[0][name].numel()
        masks = [keep_mask(7, i, name, 0, numel, 0.3, torch.device("cpu")).reshape(taus[0][name].shape)
                 for i in range(len(taus))]
        expected = ref.dare([t[name] for t in taus], masks, 0.3)
        torch.testing.assert_close(result[name], expected, rtol=1e-6, atol=1e-6)


def test_dare_masks_are_seeded_chunk_independent_and_fair():
    cpu = torch.device("cpu")
    whole = keep_mask(5, 2, "layer.weight", 0, 200_000, 0.9, cpu)
    pieces = torch.cat([keep_mask(5, 2, "layer.weight", s, 1000, 0.9, cpu) for s in range(0, 200_000, 1000)])
    assert torch.equal(whole, pieces)
    assert abs(whole.float().mean().item() - 0.1) < 0.005
    assert not torch.equal(whole, keep_mask(6, 2, "layer.weight", 0, 200_000, 0.9, cpu))
    assert not torch.equal(whole, keep_mask(5, 3, "layer.weight", 0, 200_000, 0.9, cpu))
    assert not torch.equal(whole, keep_mask(5, 2, "other", 0, 200_000, 0.9, cpu))
    assert keep_mask(5, 2, "x", 0, 1000, 0.0, cpu).all()


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_is_reproducible(vectors, tmp_path, method):
    first = tmp_path / "a.safetensors"
    second = tmp_path / "b.safetensors"
    for out in (first, second):
        merge_vectors(vectors, out, method, options=StreamOptions(device="cpu"))
    assert first.read_bytes() == second.read_bytes()  # metadata included: it names inputs, not outputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(tmp_path, dtype):
    paths = make_vectors(tmp_path / "v", 3, {"w": (33, 17)}, dtype=dtype)
    taus = load_all(paths)
    out = merged(paths, tmp_path, "negmerge")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    expected = ref.negmerge([t["w"].to(work) for t in taus]).to(dtype)
    assert out["w"].dtype == dtype
    assert torch.equal(out["w"], expected)


@pytest.mark.parametrize(
    "method, params, fragment",
    [
        ("ties", {"density": 0.0}, "density 0.0"),
        ("ties", {"density": 1.5}, "density 1.5"),
        ("dare", {"drop_rate": 1.0}, "drop_rate 1.0"),
        ("dare", {"seed": -1}, "seed -1"),
        ("negmerge", {"density": 0.5}, "no option density"),
        ("nope", {}, "unknown method"),
    ],
)
def test_bad_parameters(method, params, fragment):
    with pytest.raises(UsageError, match=fragment):
        create_method(method, **params)


def test_every_method_is_documented():
    for cls in REGISTRY.values():
        assert cls.summary and cls.formula
        for param in cls.params:
            assert param.help and param.requirement
