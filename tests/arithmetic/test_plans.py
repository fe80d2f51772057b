"""The planner (negmerge_cli.arithmetic.plans) called directly, over real safetensors files: which
output tensors vector, merge and apply make, from which inputs, in which dtypes; the checks that
refuse mismatched inputs before any tensor data is read; --include/--exclude selection; and the
pass that finds all-zero results before the output's layout is fixed. Plans run through the
streaming engine are compared with the same arithmetic done densely in plain torch."""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from helpers import tricky_tensor
from safetensors.torch import save_file

from negmerge_cli.arithmetic.plans import plan_apply, plan_merge, split_zero_jobs, task_vectors
from negmerge_cli.arithmetic.selection import TensorSelection
from negmerge_cli.arithmetic.streaming import Engine, Source
from negmerge_cli.checkpoint import open_checkpoint
from negmerge_cli.checkpoint.zero_tensors import ZeroTensor, zero_tensors_metadata
from negmerge_cli.core.errors import CheckpointError, UsageError

CPU = torch.device("cpu")
SMALL_BUDGET = 1 << 16  # the engine's smallest slices (1024 elements) for every plan here
MISSING_HINT = re.compile(r"missing[-_]as[-_]zero")

# A base with float tensors of several dtypes and an integer buffer (safetensors stores them in an
# order of its own: tests compare with the order of the opened file, ``in_file_order``).
BASE = {
    "layer.weight": ((40, 30), torch.float32),
    "layer.bias": ((40,), torch.float32),
    "position_ids": ((16,), torch.int64),
    "norm.weight": ((30,), torch.bfloat16),
    "head.weight": ((5, 30), torch.float16),
}
BASE_FLOATS = ["layer.weight", "layer.bias", "norm.weight", "head.weight"]


def in_file_order(checkpoint, names) -> list[str]:
    return [name for name in checkpoint.names if name in names]


class Watched:
    """A real opened checkpoint whose tensor reads are counted (per tensor, in elements); every
    other attribute is the checkpoint's own."""

    def __init__(self, checkpoint):
        self._checkpoint = checkpoint
        self.reads: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self._checkpoint, name)

    def __contains__(self, name: str) -> bool:
        return name in self._checkpoint

    def _count(self, name: str, start: int, stop: int | None) -> None:
        stop = self._checkpoint.entry(name).numel if stop is None else stop
        self.reads[name] = self.reads.get(name, 0) + (stop - start)

    def read(self, name, start=0, stop=None, pin=False):
        self._count(name, start, stop)
        return self._checkpoint.read(name, start, stop, pin)

    def read_tensor(self, name):
        self._count(name, 0, None)
        return self._checkpoint.read_tensor(name)


@pytest.fixture
def opened():
    """opened(*paths) -> the checkpoints, opened (no hashing) and watched; closed after the test."""
    with ExitStack() as stack:
        yield lambda *paths: [Watched(stack.enter_context(open_checkpoint(p, digest=False))) for p in paths]


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def base_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.arange(shape[0]) if not dtype.is_floating_point else tricky_tensor(shape, generator)).to(dtype)
            for name, (shape, dtype) in BASE.items()}


def finetune_of(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (value.float() + 0.1 * tricky_tensor(tuple(value.shape), generator)).to(value.dtype)
            if value.is_floating_point() else value.clone() for name, value in base.items()}


@pytest.fixture
def model(tmp_path: Path):
    """(base path, [fine-tune paths], {label: tensors}) for a base and two fine-tunes."""
    base = base_tensors()
    tensors = {"base": base, "ft1": finetune_of(base, 1), "ft2": finetune_of(base, 2)}
    paths = {label: save(tmp_path / f"{label}.safetensors", t) for label, t in tensors.items()}
    return paths["base"], [paths["ft1"], paths["ft2"]], tensors


def run_plan(jobs, process, budget: int = SMALL_BUDGET) -> dict[str, torch.Tensor]:
    """Every job's result through the engine, whole and in its shape."""
    parts: dict[str, list[torch.Tensor]] = {}
    Engine(CPU, budget).run(jobs, process, lambda name, r: parts.setdefault(name, []).append(r), lambda job: 2)
    return {job.name: torch.cat(parts[job.name]).reshape(job.shape) for job in jobs}


def sum_process(has_base: bool):
    def process(job, start, stop, slices):
        taus = task_vectors(slices, has_base)
        total = next(taus).clone()
        for tau in taus:
            total += tau
        return total
    return process


# -- merge and vector plans: outputs, sources, dtypes --------------------------------------------


def test_plan_with_base_has_one_job_per_float_tensor_of_the_base(model, opened):
    base_path, ft_paths, _ = model
    base, ft1, ft2 = opened(base_path, *ft_paths)
    jobs = plan_merge([ft1, ft2], base, None, missing_as_zero=False)
    assert [job.name for job in jobs] == in_file_order(base, BASE_FLOATS)  # the integer buffer has no task vector
    assert len(jobs) == 4 and "position_ids" in base
    for job in jobs:
        assert job.shape == BASE[job.name][0]
        assert job.sources == (Source(base, job.name), Source(ft1, job.name), Source(ft2, job.name))
        assert job.out_dtype == BASE[job.name][1] and job.compute_dtype == torch.float32
    assert base.reads == ft1.reads == ft2.reads == {}  # planning reads headers only


@pytest.mark.parametrize("base_dtype, ft_dtypes, requested, out_dtype, compute_dtype", [
    (torch.float32, [torch.float32], None, torch.float32, torch.float32),
    (torch.bfloat16, [torch.float16], None, torch.float32, torch.float32),
    (torch.float16, [torch.float16, torch.bfloat16], None, torch.float32, torch.float32),
    (torch.bfloat16, [torch.bfloat16, torch.bfloat16], None, torch.bfloat16, torch.float32),
    (torch.float32, [torch.float64], None, torch.float64, torch.float64),
    (torch.float8_e4m3fn, [torch.float16], None, torch.float16, torch.float32),
    (torch.float8_e4m3fn, [torch.float8_e5m2], None, torch.float16, torch.float32),
    (torch.bfloat16, [torch.bfloat16], torch.float16, torch.float16, torch.float32),
    (torch.float64, [torch.float32], torch.bfloat16, torch.bfloat16, torch.float64),
])
def test_output_and_working_dtypes(tmp_path, opened, base_dtype, ft_dtypes, requested, out_dtype, compute_dtype):
    values = torch.linspace(-2, 2, 12).reshape(3, 4)
    base_path = save(tmp_path / "base.safetensors", {"w": values.to(base_dtype)})
    ft_paths = [save(tmp_path / f"ft{i}.safetensors", {"w": (values + i + 1).to(d)}) for i, d in enumerate(ft_dtypes)]
    base, *fts = opened(base_path, *ft_paths)
    with_base = plan_merge(fts, base, requested, missing_as_zero=False)
    assert [(j.name, j.out_dtype, j.compute_dtype) for j in with_base] == [("w", out_dtype, compute_dtype)]
    # the same inputs as task vectors (no base) follow the same rule
    vectors = plan_merge([base, *fts], None, requested, missing_as_zero=False)
    assert [(j.out_dtype, j.compute_dtype) for j in vectors] == [(out_dtype, compute_dtype)]


@pytest.mark.parametrize("budget", [SMALL_BUDGET, 1 << 30])
def test_vector_plan_through_the_engine_equals_dense_difference(model, opened, budget):
    base_path, ft_paths, tensors = model
    base, ft1 = opened(base_path, ft_paths[0])
    jobs = plan_merge([ft1], base, None, missing_as_zero=False)
    result = run_plan(jobs, lambda job, start, stop, slices: next(task_vectors(slices, True)), budget)
    for name in BASE_FLOATS:
        expected = (tensors["ft1"][name].float() - tensors["base"][name].float()).to(BASE[name][1])
        assert result[name].dtype == BASE[name][1] and torch.equal(result[name], expected), name
        assert bool(expected.any()), name


def test_merge_of_vectors_through_the_engine_equals_dense_sum(tmp_path, opened):
    generator = torch.Generator().manual_seed(5)
    dense = [{"w": tricky_tensor((50, 70), generator), "b": tricky_tensor((70,), generator).half()} for _ in range(3)]
    del dense[1]["b"]  # read as zeros with missing-as-zero
    paths = [save(tmp_path / f"tau{i}.safetensors", t) for i, t in enumerate(dense)]
    vectors = opened(*paths)
    jobs = plan_merge(vectors, None, None, missing_as_zero=True)
    assert sorted(j.name for j in jobs) == ["b", "w"]
    b = next(j for j in jobs if j.name == "b")
    assert b.sources == (Source(vectors[0], "b"), Source(None, "b"), Source(vectors[2], "b"))
    assert b.out_dtype == torch.float16
    result = run_plan(jobs, sum_process(has_base=False))
    assert torch.equal(result["w"], dense[0]["w"] + dense[1]["w"] + dense[2]["w"])
    assert torch.equal(result["b"], (dense[0]["b"].float() + 0 + dense[2]["b"].float()).half())


def test_missing_as_zero_with_a_base_makes_the_missing_tau_zero(model, tmp_path, opened):
    base_path, _, tensors = model
    partial = {k: v for k, v in tensors["ft1"].items() if k != "layer.bias"}
    ft_path = save(tmp_path / "partial.safetensors", partial)
    base, ft, ft2 = opened(base_path, ft_path, model[1][1])
    jobs = plan_merge([ft, ft2], base, None, missing_as_zero=True)
    bias = next(j for j in jobs if j.name == "layer.bias")
    assert bias.sources == (Source(base, "layer.bias"), Source(base, "layer.bias"), Source(ft2, "layer.bias"))
    result = run_plan(jobs, sum_process(has_base=True))
    expected = tensors["ft2"]["layer.bias"] - tensors["base"]["layer.bias"]  # ft - base is 0 for the missing one
    assert torch.equal(result["layer.bias"], 0 + expected)


def test_omitted_zero_tensors_read_as_zeros_and_take_part_in_shapes_and_dtypes(tmp_path, opened):
    stored = {"w": torch.ones(4, 6), "b": torch.full((6,), 2.0)}
    zeros = zero_tensors_metadata([ZeroTensor("b", torch.float64, (6,))])
    first = save(tmp_path / "v1.safetensors", {"w": torch.ones(4, 6)}, zeros)
    second = save(tmp_path / "v2.safetensors", stored)
    v1, v2 = opened(first, second)
    jobs = {j.name: j for j in plan_merge([v1, v2], None, None, missing_as_zero=False)}  # no flag needed
    assert jobs["b"].sources == (Source(None, "b"), Source(v2, "b"))
    assert jobs["b"].out_dtype == torch.float64 and jobs["b"].compute_dtype == torch.float64
    result = run_plan(list(jobs.values()), sum_process(False))
    assert torch.equal(result["b"], torch.full((6,), 2.0, dtype=torch.float64))
    # a listed shape that differs from the stored one is refused, naming both files
    bad = save(tmp_path / "v3.safetensors", {"w": torch.ones(4, 6)},
               zero_tensors_metadata([ZeroTensor("b", torch.float32, (3, 2))]))
    v3, v2b = opened(bad, second)
    with pytest.raises(CheckpointError, match=re.escape(f"{second}: tensor 'b' has shape [6], but [3, 2] in {bad}")):
        plan_merge([v3, v2b], None, None, missing_as_zero=False)
    assert v3.reads == v2b.reads == {}


# -- refusals before any tensor data is read ------------------------------------------------------


def _reshaped(t):
    t["layer.weight"] = t["layer.weight"].reshape(30, 40)


def _no_bias(t):
    del t["layer.bias"]


def _int_bias(t):
    t["layer.bias"] = t["layer.bias"].int()


def _extra_float(t):
    t["extra.weight"] = torch.ones(3)


@pytest.mark.parametrize("change, message", [
    (_reshaped, "{ft}: tensor 'layer.weight' has shape [30, 40], but [40, 30] in {base}"),
    (_no_bias, "{ft}: tensor 'layer.bias' is missing (present in {base})"),
    (_int_bias, "{ft}: tensor 'layer.bias' is I32; it is floating-point in the base"),
    (_extra_float, "{base}: tensor 'extra.weight' is missing (present in {ft})"),
], ids=["shape", "missing", "dtype", "extra"])
def test_plan_with_base_refuses_a_mismatched_finetune_before_reading(model, tmp_path, opened, change, message):
    base_path, ft_paths, tensors = model
    bad = dict(tensors["ft2"])
    change(bad)
    bad_path = save(tmp_path / "bad.safetensors", bad)
    base, good, ft = opened(base_path, ft_paths[0], bad_path)  # the first fine-tune is fine: the second is named
    with pytest.raises(CheckpointError) as caught:
        plan_merge([good, ft], base, None, missing_as_zero=False)
    assert str(caught.value).startswith(message.format(ft=bad_path, base=base_path))
    assert str(ft_paths[0]) not in str(caught.value)
    if change is _no_bias:
        assert MISSING_HINT.search(str(caught.value))
    assert base.reads == good.reads == ft.reads == {}


@pytest.mark.parametrize("change, message", [
    (_reshaped, "{bad}: tensor 'layer.weight' has shape [30, 40], but [40, 30] in {good}"),
    (_no_bias, "{bad}: tensor 'layer.bias' is missing (present in {good})"),
    (_int_bias, "{bad}: tensor 'layer.bias' is I32; task vectors hold floating-point tensors only"),
    (_extra_float, "{good}: tensor 'extra.weight' is missing (present in {bad})"),
], ids=["shape", "missing", "dtype", "extra"])
def test_plan_of_vectors_refuses_mismatched_vectors_before_reading(tmp_path, opened, change, message):
    good_tensors = {k: v for k, v in base_tensors().items() if v.is_floating_point()}
    bad_tensors = dict(good_tensors)
    change(bad_tensors)
    good_path = save(tmp_path / "good.safetensors", good_tensors)
    bad_path = save(tmp_path / "bad.safetensors", bad_tensors)
    good, bad = opened(good_path, bad_path)
    with pytest.raises(CheckpointError) as caught:
        plan_merge([good, bad], None, None, missing_as_zero=False)
    assert str(caught.value).startswith(message.format(good=good_path, bad=bad_path))
    assert good.reads == bad.reads == {}


def test_integer_tensors_are_left_out_of_plans_with_a_base(model, tmp_path, opened):
    """An integer buffer in both base and fine-tune, or only in the fine-tune, is no task vector."""
    base_path, _, tensors = model
    ft_path = save(tmp_path / "ft.safetensors", {**tensors["ft1"], "step": torch.tensor([3])})
    base, ft = opened(base_path, ft_path)
    assert [j.name for j in plan_merge([ft], base, None, missing_as_zero=False)] == in_file_order(base, BASE_FLOATS)


# -- tensor selection -------------------------------------------------------------------------------


@pytest.mark.parametrize("include, exclude, expected", [
    ((), (), BASE_FLOATS),
    (("layer.*",), (), ["layer.weight", "layer.bias"]),
    ((), ("*.bias",), ["layer.weight", "norm.weight", "head.weight"]),
    (("layer.*", "head.*"), ("*.bias",), ["layer.weight", "head.weight"]),
    (("*.weight",), ("norm.*", "head.weight"), ["layer.weight"]),
    (("Layer.*", "layer.bias"), (), ["layer.bias"]),  # case-sensitive: 'Layer.*' is refused below
])
def test_selection_picks_tensors_in_base_order(model, opened, include, exclude, expected):
    base_path, ft_paths, _ = model
    base, ft = opened(base_path, ft_paths[0])
    selection = TensorSelection(include, exclude)
    if "Layer.*" in include:
        with pytest.raises(UsageError, match="'Layer.\\*': matches no tensor"):
            plan_merge([ft], base, None, False, selection)
        return
    assert [j.name for j in plan_merge([ft], base, None, False, selection)] == in_file_order(base, expected)


@pytest.mark.parametrize("include, exclude, error", [
    (("nothing.*",), (), "matches no tensor"),
    ((), ("nothing.*",), "matches no tensor"),
    (("position_ids",), (), "leaves no floating-point tensor"),
    (("layer.*",), ("layer.*",), "leaves no floating-point tensor"),
])
def test_selection_that_matches_or_leaves_nothing_is_refused(model, opened, include, exclude, error):
    base_path, ft_paths, _ = model
    base, ft = opened(base_path, ft_paths[0])
    with pytest.raises(UsageError, match=error):
        plan_merge([ft], base, None, False, TensorSelection(include, exclude))


def test_unselected_tensors_are_not_checked(model, tmp_path, opened):
    """A fine-tune lacking a tensor, or holding an extra one, is fine when the selection leaves it out."""
    base_path, _, tensors = model
    bad = {k: v for k, v in tensors["ft1"].items() if k != "layer.bias"} | {"extra.weight": torch.ones(3)}
    ft_path = save(tmp_path / "odd.safetensors", bad)
    base, ft = opened(base_path, ft_path)
    selection = TensorSelection(exclude=("layer.bias", "extra.*"))
    expected = in_file_order(base, ["layer.weight", "norm.weight", "head.weight"])
    assert [j.name for j in plan_merge([ft], base, None, False, selection)] == expected
    with pytest.raises(CheckpointError, match="extra.weight"):
        plan_merge([ft], base, None, False, TensorSelection(exclude=("layer.bias",)))


# -- all-zero results ---------------------------------------------------------------------------------


def test_split_zero_jobs_leaves_out_exactly_the_results_zero_everywhere(tmp_path, opened):
    generator = torch.Generator().manual_seed(11)
    base = {
        "changed": tricky_tensor((3000,), generator),
        "same": tricky_tensor((9000,), generator),
        "last_differs": tricky_tensor((9000,), generator),  # beyond the probe and several slices
        "signed_zero": torch.zeros(50),
        "one_ft_differs": tricky_tensor((20,), generator),
        "half": tricky_tensor((2500,), generator).half(),
        "empty": torch.zeros(0, 3),
    }
    ft1 = {k: v.clone() for k, v in base.items()}
    ft1["changed"] += 1
    ft1["last_differs"][-1] += 0.5
    ft1["signed_zero"] = -torch.zeros(50)  # -0 - +0 is -0: zero
    ft2 = {k: v.clone() for k, v in ft1.items()}
    ft2["one_ft_differs"][7] = 100.0
    paths = [save(tmp_path / f"{label}.safetensors", t) for label, t in (("base", base), ("ft1", ft1), ("ft2", ft2))]
    b, f1, f2 = opened(*paths)
    jobs = plan_merge([f1, f2], b, None, missing_as_zero=False)
    kept, zeros = split_zero_jobs(jobs, True, Engine(CPU, SMALL_BUDGET))

    dense_zero = {name: base[name].numel() > 0 and all(bool(((ft[name].float() - base[name].float()) == 0).all())
                                                     for ft in (ft1, ft2)) for name in base}
    assert dense_zero == {"changed": False, "same": True, "last_differs": False, "signed_zero": True,
                          "one_ft_differs": False, "half": True, "empty": False}
    assert [j.name for j in kept] == [j.name for j in jobs if not dense_zero[j.name]]
    assert zeros == [ZeroTensor(j.name, j.out_dtype, j.shape) for j in jobs if dense_zero[j.name]]
    assert {z.name: z.dtype for z in zeros}["half"] == torch.float16
    # a changed tensor is decided by one small probe; an unchanged one is read whole
    assert f1.reads["changed"] == b.reads["changed"] == 3000  # probe of 4096 elements covers it
    assert f1.reads["same"] == f2.reads["same"] == 9000
    assert f1.reads["last_differs"] == 9000 and "last_differs" not in f2.reads  # first vector decides


def test_split_zero_jobs_without_base_and_with_missing_inputs(tmp_path, opened):
    v1 = save(tmp_path / "v1.safetensors",
              {"zero": torch.zeros(5000), "nonzero": torch.zeros(100), "gone": torch.zeros(3)})
    nonzero = torch.zeros(100)
    nonzero[99] = 1e-30
    v2 = save(tmp_path / "v2.safetensors", {"zero": -torch.zeros(5000), "nonzero": nonzero},
              zero_tensors_metadata([ZeroTensor("listed", torch.float32, (4,))]))
    a, b = opened(v1, v2)
    jobs = plan_merge([a, b], None, None, missing_as_zero=True)
    assert {j.name for j in jobs} == {"zero", "nonzero", "gone", "listed"}
    kept, zeros = split_zero_jobs(jobs, False, Engine(CPU, SMALL_BUDGET))
    assert [j.name for j in kept] == ["nonzero"]
    assert sorted(z.name for z in zeros) == ["gone", "listed", "zero"]


def test_split_zero_jobs_reports_a_nan_input_unless_the_check_is_off(tmp_path, opened):
    """NaN - NaN is NaN, not zero: with the check off the tensor is kept (never dropped as zero)."""
    values = torch.zeros(2000)
    values[1500] = float("nan")
    base_path = save(tmp_path / "base.safetensors", {"w": values})
    ft_path = save(tmp_path / "ft.safetensors", {"w": values.clone()})
    base, ft = opened(base_path, ft_path)
    jobs = plan_merge([ft], base, None, missing_as_zero=False)
    with pytest.raises(CheckpointError, match=re.escape(f"{base_path}: tensor 'w' contains NaN or Inf")):
        split_zero_jobs(jobs, True, Engine(CPU, SMALL_BUDGET))
    kept, zeros = split_zero_jobs(jobs, True, Engine(CPU, SMALL_BUDGET, check_finite=False))
    assert [j.name for j in kept] == ["w"] and zeros == []


# -- apply ---------------------------------------------------------------------------------------


@pytest.fixture
def vector_path(tmp_path: Path) -> Path:
    generator = torch.Generator().manual_seed(3)
    return save(tmp_path / "vector.safetensors", {
        "layer.weight": tricky_tensor((40, 30), generator),
        "head.weight": tricky_tensor((5, 30), generator).bfloat16(),
        "norm.weight": tricky_tensor((30,), generator),
    })


def test_plan_apply_copies_what_the_vector_lacks_and_adds_the_rest(model, vector_path, opened):
    base_path, _, _ = model
    base, vector = opened(base_path, vector_path)
    jobs = {j.name: j for j in plan_apply(base, vector, None, TensorSelection(exclude=("norm.*",)))}
    assert list(jobs) == base.names and set(jobs) == set(BASE)  # every tensor of the base, in its order
    assert jobs["position_ids"].sources == (Source(base, "position_ids"),)
    assert jobs["position_ids"].compute_dtype is None and jobs["position_ids"].out_dtype == torch.int64
    for copied in ("layer.bias", "norm.weight"):  # not in the vector; excluded
        assert jobs[copied].sources == (Source(base, copied),) and jobs[copied].compute_dtype is None
    assert jobs["layer.weight"].sources == (Source(base, "layer.weight"), Source(vector, "layer.weight"))
    assert jobs["head.weight"].out_dtype == torch.float16 and jobs["head.weight"].compute_dtype == torch.float32
    assert base.reads == vector.reads == {}


@pytest.mark.parametrize("requested", [None, torch.bfloat16, torch.float64])
def test_plan_apply_through_the_engine_equals_dense_base_plus_scaled_vector(model, vector_path, opened, requested):
    base_path, _, tensors = model
    base, vector = opened(base_path, vector_path)
    jobs = plan_apply(base, vector, requested)
    scale = -0.75

    def process(job, start, stop, slices):
        theta = next(slices)
        if job.compute_dtype is not None and len(job.sources) == 2:
            theta.add_(next(slices).mul_(scale))
        return theta

    result = run_plan(jobs, process)
    delta = {name: vector.read_tensor(name) for name in vector.names}
    for name, value in tensors["base"].items():
        out = value.dtype if requested is None or not value.is_floating_point() else requested
        if name in delta:  # every input here is float32 or narrower: the arithmetic is in float32
            expected = (value.float() + delta[name].float() * scale).to(out)
        elif value.is_floating_point():
            expected = value.float().to(out)
        else:
            expected = value
        assert result[name].dtype == out and torch.equal(result[name], expected), name


@pytest.mark.parametrize("vector, message", [
    ({"layer.weight": torch.ones(30, 40)},
     "{vector}: tensor 'layer.weight' has shape [30, 40], but [40, 30] in {base}"),
    ({"missing.weight": torch.ones(3)}, "{vector}: tensor 'missing.weight' is not in the base {base}"),
    ({"layer.bias": torch.ones(40, dtype=torch.int32)},
     "{vector}: tensor 'layer.bias' is I32; task vectors hold floating-point tensors only"),
], ids=["shape", "not-in-base", "integer"])
def test_plan_apply_refuses_a_mismatched_vector_before_reading(model, tmp_path, opened, vector, message):
    base_path, _, _ = model
    vector_path = save(tmp_path / "bad-vector.safetensors", vector)
    base, bad = opened(base_path, vector_path)
    with pytest.raises(CheckpointError) as caught:
        plan_apply(base, bad, None)
    assert str(caught.value).startswith(message.format(vector=vector_path, base=base_path))
    assert base.reads == bad.reads == {}


def test_plan_apply_copies_omitted_zero_tensors_but_checks_their_shape(model, tmp_path, opened):
    base_path, _, _ = model
    fine = save(tmp_path / "v-ok.safetensors", {"layer.weight": torch.ones(40, 30)},
                zero_tensors_metadata([ZeroTensor("layer.bias", torch.float32, (40,))]))
    wrong = save(tmp_path / "v-bad.safetensors", {"layer.weight": torch.ones(40, 30)},
                 zero_tensors_metadata([ZeroTensor("layer.bias", torch.float32, (41,))]))
    base, ok, bad = opened(base_path, fine, wrong)
    jobs = {j.name: j for j in plan_apply(base, ok, None)}
    assert jobs["layer.bias"].sources == (Source(base, "layer.bias"),)
    with pytest.raises(CheckpointError, match=re.escape(f"{wrong}: tensor 'layer.bias' has shape [41], but [40] in")):
        plan_apply(base, bad, None)
    # a vector tensor left out by the selection is copied, and a glob must still match something
    jobs = {j.name: j for j in plan_apply(base, ok, None, TensorSelection(exclude=("layer.weight",)))}
    assert jobs["layer.weight"].sources == (Source(base, "layer.weight"),)
    with pytest.raises(UsageError, match="matches no tensor"):
        plan_apply(base, ok, None, TensorSelection(include=("nothing",)))
