"""The streaming engine (negmerge_cli.arithmetic.streaming, its threads in .background) called
directly, over real safetensors files: slicing within a memory budget, the reader and hasher
threads, the write-behind thread and the NaN/Inf checks, each compared with a dense whole-tensor
computation in plain torch."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

import pytest
import torch
from helpers import tricky_tensor
from safetensors.torch import save_file

from negmerge_cli.arithmetic.background import Hashers, WriteBehind, files_to_hash
from negmerge_cli.arithmetic.streaming import Engine, Source, TensorJob, check_sum
from negmerge_cli.checkpoint import digests, open_checkpoint
from negmerge_cli.core.errors import CheckpointError, UsageError

CPU = torch.device("cpu")
FLOAT_BUFFERS = 2

# name -> (shape, stored dtype, output dtype). Sizes are no multiple of the smallest slice (1024
# elements), so the last slice of a tensor is a partial one.
TENSORS = {
    "a": ((61, 67), torch.float32, torch.float32),
    "b": ((1500,), torch.bfloat16, torch.bfloat16),
    "c": ((), torch.float32, torch.float32),
    "e": ((0, 4), torch.float32, torch.float32),
    "h": ((3, 700), torch.float16, torch.float32),
}


def smallest_budget(float_buffers: int = FLOAT_BUFFERS) -> int:
    """The smallest budget the engine accepts, as its own error message states it."""
    with pytest.raises(UsageError) as caught:
        Engine(CPU, 1).slice_elements(TensorJob("x", (10,), torch.float32, ()), float_buffers)
    return int(re.search(r"need >= (\d+)", str(caught.value)).group(1))


# the smallest budget (1024-element slices), odd sizes in between, and one that fits every tensor
BUDGET_FACTORS = [1, 1.5, 3.3, 10_000]


@pytest.fixture
def files3(tmp_path: Path) -> tuple[Path, list[Path], dict[str, list[torch.Tensor]]]:
    """A base and two fine-tunes of it holding TENSORS, and the tensors themselves (base first)."""
    generator = torch.Generator().manual_seed(7)
    dense: dict[str, list[torch.Tensor]] = {}
    for name, (shape, dtype, _) in TENSORS.items():
        base = tricky_tensor(shape, generator)
        dense[name] = [base.to(dtype)] + [(base + 0.1 * tricky_tensor(shape, generator)).to(dtype) for _ in range(2)]
    paths = []
    for index, label in enumerate(["base", "ft1", "ft2"]):
        path = tmp_path / f"{label}.safetensors"
        save_file({name: values[index].contiguous() for name, values in dense.items()}, str(path))
        paths.append(path)
    return paths[0], paths[1:], dense


def jobs_for(checkpoints: list, names=TENSORS) -> list[TensorJob]:
    return [TensorJob(name, TENSORS[name][0], TENSORS[name][2], tuple(Source(c, name) for c in checkpoints))
            for name in names]


def sum_of_taus(job: TensorJob, start: int, stop: int, slices) -> torch.Tensor:
    """sum_i (finetuned_i - base), one slice; the differences are taken in place, as vector does."""
    base = next(slices)
    total = torch.zeros_like(base)
    for finetuned in slices:
        total += finetuned.sub_(base)
    return total


def dense_sum_of_taus(tensors: list[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    base = tensors[0].float()
    total = torch.zeros_like(base)
    for finetuned in tensors[1:]:
        total = total + (finetuned.float() - base)
    return total.to(out_dtype)


def run(engine: Engine, jobs: list[TensorJob], process, float_buffers: int = FLOAT_BUFFERS):
    """Run the engine; returns {name: [(start, stop, result slice), ...]} in the order written."""
    spans: dict[str, list[tuple[int, int]]] = {}
    written: dict[str, list[torch.Tensor]] = {}

    def recording(job, start, stop, slices):
        spans.setdefault(job.name, []).append((start, stop))
        return process(job, start, stop, slices)

    order: list[str] = []

    def write(name: str, result: torch.Tensor) -> None:
        order.append(name)
        written.setdefault(name, []).append(result)

    engine.run(jobs, recording, write, lambda job: float_buffers)
    return spans, written, order


def negmerge_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("negmerge-") and t.is_alive()]


# -- slicing ------------------------------------------------------------------------------------


def test_smallest_budget_gives_1024_element_slices_and_less_is_refused():
    job = TensorJob("t", (5000,), torch.float32, ())
    budget = smallest_budget()
    assert Engine(CPU, budget).slice_elements(job, FLOAT_BUFFERS) == 1024
    with pytest.raises(UsageError, match="too small to stream"):
        Engine(CPU, budget - 1).slice_elements(job, FLOAT_BUFFERS)


@pytest.mark.parametrize("factor", [1, 1.5, 2, 7.9, 64])
@pytest.mark.parametrize("float_buffers", [1, 2, 6])
def test_slices_tile_the_tensor_in_order_within_the_budget(factor, float_buffers):
    job = TensorJob("t", (123_457,), torch.float32, ())
    smallest = smallest_budget(float_buffers)
    per_element = smallest // 1024
    budget = int(smallest * factor)
    slices = Engine(CPU, budget).slices(job, float_buffers)
    assert slices[0][0] == 0 and slices[-1][1] == job.numel
    assert all(stop == start for (_, stop), (start, _) in zip(slices, slices[1:]))  # contiguous, ascending
    sizes = [stop - start for start, stop in slices]
    assert all(size * per_element <= budget for size in sizes)
    assert len(set(sizes[:-1])) <= 1 and 0 < sizes[-1] <= sizes[0]  # equal slices, a shorter last one
    assert len(slices) == -(-job.numel // (budget // per_element))


def test_more_working_buffers_mean_smaller_slices():
    job = TensorJob("t", (1 << 20,), torch.float32, ())
    engine = Engine(CPU, 4 * smallest_budget(8))
    sizes = [engine.slice_elements(job, buffers) for buffers in (1, 2, 4, 8)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_cpu_slices_are_capped_unless_whole_tensors_are_asked_for():
    job = TensorJob("t", (300_000,), torch.float32, ())
    engine = Engine(CPU, 1 << 40)
    cached = engine.slices(job, FLOAT_BUFFERS)
    assert len(cached) == 2 and cached[0] == (0, 1 << 18)  # 256K elements: near the L2 cache
    assert engine.slices(job, FLOAT_BUFFERS, cache_sized=False) == [(0, 300_000)]


def test_empty_and_scalar_tensors_get_one_slice():
    engine = Engine(CPU, smallest_budget())
    assert engine.slices(TensorJob("e", (0, 4), torch.float32, ()), FLOAT_BUFFERS) == [(0, 0)]
    assert engine.slices(TensorJob("s", (), torch.float32, ()), FLOAT_BUFFERS) == [(0, 1)]


# -- the loop against a dense computation ----------------------------------------------------------


@pytest.mark.parametrize("factor", BUDGET_FACTORS)
def test_engine_equals_dense_sum_of_task_vectors_whatever_the_budget(files3, factor):
    base, finetuned, dense = files3
    budget = int(smallest_budget() * factor)
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1, \
            open_checkpoint(finetuned[1], digest=False) as f2:
        jobs = jobs_for([b, f1, f2])
        engine = Engine(CPU, budget)
        spans, written, order = run(engine, jobs, sum_of_taus)
        for job in jobs:
            assert spans[job.name] == engine.slices(job, FLOAT_BUFFERS)
    # jobs in plan order, each one's slices written one after the other
    assert order == [name for name in TENSORS for _ in spans[name]]
    if factor == 1:
        assert len(spans["a"]) == 4 and len(spans["h"]) == 3  # really split into ranges
    for name, (shape, _, out_dtype) in TENSORS.items():
        parts = written[name]
        assert all(part.dtype == out_dtype for part in parts), name
        result = torch.cat(parts).reshape(shape)
        expected = dense_sum_of_taus(dense[name], out_dtype)
        assert torch.equal(result, expected), name
    assert bool(torch.cat(written["a"]).abs().sum() > 0)  # not trivially zero


def test_slices_of_every_source_are_aligned_element_for_element(tmp_path):
    """Source i of a slice holds elements [start, stop) of its own tensor: distinct values per file
    and per element show any shift, swap or reordering."""
    numel = 5000
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"s{index}.safetensors")
        save_file({"x": torch.arange(numel, dtype=torch.float64) + 1_000_000 * index,
                   "y": -torch.arange(2500, dtype=torch.float64) - 1_000_000 * index}, str(paths[-1]))
    seen = []

    def check(job, start, stop, slices):
        received = list(slices)
        sign = 1 if job.name == "x" else -1
        for index, piece in enumerate(received):
            expected = sign * (torch.arange(start, stop, dtype=torch.float64) + 1_000_000 * index)
            seen.append(torch.equal(piece, expected))
        return received[2]

    checkpoints = [open_checkpoint(p, digest=False) for p in paths]
    try:
        jobs = [TensorJob(n, (k,), torch.float64, tuple(Source(c, n) for c in checkpoints), torch.float64)
                for n, k in (("x", numel), ("y", 2500))]
        _, written, _ = run(Engine(CPU, smallest_budget()), jobs, check)
    finally:
        for c in checkpoints:
            c.close()
    assert len(seen) == 3 * (5 + 3) and all(seen)
    assert torch.equal(torch.cat(written["x"]), torch.arange(numel, dtype=torch.float64) + 2_000_000)
    assert torch.equal(torch.cat(written["y"]), -torch.arange(2500, dtype=torch.float64) - 2_000_000)


def test_slices_arrive_in_the_compute_dtype_and_results_leave_in_the_output_dtype(tmp_path):
    generator = torch.Generator().manual_seed(3)
    values = {"bf": tricky_tensor((3000,), generator).bfloat16(), "hf": tricky_tensor((3000,), generator).half(),
              "f32": tricky_tensor((3000,), generator)}
    path = tmp_path / "mixed.safetensors"
    save_file(values, str(path))
    arrived: dict[str, set] = {}

    def double(job, start, stop, slices):
        piece = next(slices)
        arrived.setdefault(job.name, set()).add(piece.dtype)
        return piece * 2

    cases = [("bf", torch.float32, torch.bfloat16), ("hf", torch.float64, torch.float16),
             ("f32", torch.float32, torch.bfloat16)]
    with open_checkpoint(path, digest=False) as checkpoint:
        jobs = [TensorJob(n, (3000,), out, (Source(checkpoint, n),), compute) for n, compute, out in cases]
        _, written, _ = run(Engine(CPU, smallest_budget()), jobs, double)
    for name, compute, out in cases:
        assert arrived[name] == {compute}, name
        result = torch.cat(written[name])
        assert result.dtype == out
        assert torch.equal(result, (values[name].to(compute) * 2).to(out)), name


def test_raw_jobs_pass_the_stored_bytes_through(tmp_path):
    ids = torch.arange(-3000, 3000, dtype=torch.int64) * 7919
    halves = torch.randn(2100, generator=torch.Generator().manual_seed(0)).bfloat16()
    path = tmp_path / "raw.safetensors"
    save_file({"ids": ids, "halves": halves}, str(path))
    with open_checkpoint(path, digest=False) as checkpoint:
        jobs = [TensorJob("ids", (6000,), torch.int64, (Source(checkpoint, "ids"),), compute_dtype=None),
                TensorJob("halves", (2100,), torch.bfloat16, (Source(checkpoint, "halves"),), compute_dtype=None)]
        spans, written, _ = run(Engine(CPU, smallest_budget()), jobs, lambda job, start, stop, s: next(s))
    assert len(spans["ids"]) == 6
    assert torch.cat(written["ids"]).dtype == torch.int64 and torch.equal(torch.cat(written["ids"]), ids)
    assert torch.cat(written["halves"]).dtype == torch.bfloat16 and torch.equal(torch.cat(written["halves"]), halves)


def test_a_source_without_checkpoint_reads_as_zeros(files3):
    base, finetuned, dense = files3
    with open_checkpoint(finetuned[0], digest=False) as f1:
        job = TensorJob("a", (61, 67), torch.float32, (Source(None, "a"), Source(f1, "a")))
        _, written, _ = run(Engine(CPU, smallest_budget()), [job], sum_of_taus)
    assert torch.equal(torch.cat(written["a"]).reshape(61, 67), dense["a"][1])


def test_counted_bytes_are_the_bytes_the_jobs_read(files3):
    base, finetuned, _ = files3
    counted = []
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1:
        jobs = jobs_for([b, f1]) + [TensorJob("a", (61, 67), torch.float32, (Source(None, "a"), Source(f1, "a")))]
        engine = Engine(CPU, smallest_budget(), on_bytes=counted.append)
        run(engine, jobs, sum_of_taus)
        expected = sum(job.read_bytes for job in jobs)
    assert sum(counted) == expected == 2 * (61 * 67 * 4 + 1500 * 2 + 4 + 2100 * 2) + 61 * 67 * 4


def test_hashers_give_sha256sum_on_background_threads_while_the_engine_runs(files3, monkeypatch):
    """Every input hashed whole on the hasher threads (one file twice in the list: hashed once),
    while the process subtracts in place; each digest is ``sha256sum`` and goes to the cache, and
    progress is told every byte hashed, once."""
    monkeypatch.setattr(digests, "HASH_BLOCK", 4096)  # many blocks per file, on both threads
    monkeypatch.setenv(digests.ENV_VAR, str(files3[0].parent / "cache"))
    base, finetuned, _ = files3
    paths = [base, *finetuned]
    checkpoints = [open_checkpoint(p, digest=True, rehash=True) for p in paths]
    try:
        assert not any(c.hashes_known for c in checkpoints)
        files = [f for c in checkpoints for f in c.files]
        hashed = []  # list.append is atomic: the two threads may report at once
        with Hashers(files_to_hash(files + files[:1]), on_bytes=hashed.append) as hashers:
            run(Engine(CPU, smallest_budget()), jobs_for(checkpoints), sum_of_taus)
            hashers.finish()
        assert all(c.hashes_known for c in checkpoints)  # by the threads, not on demand below
        found = [c.file_hashes()[str(p)] for c, p in zip(checkpoints, paths)]
    finally:
        for c in checkpoints:
            c.close()
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert found == expected
    assert [digests.lookup(digests.Identity.of(os.stat(p))) for p in paths] == expected
    assert sum(hashed) == sum(p.stat().st_size for p in paths) and max(hashed) <= 4096
    assert not negmerge_threads()


def test_a_file_that_shrinks_fails_its_hashing_in_the_main_thread(files3):
    base, finetuned, _ = files3
    with open_checkpoint(base, digest=True, rehash=True) as b, \
            open_checkpoint(finetuned[0], digest=True, rehash=True) as f1:
        os.truncate(finetuned[0], f1.files[0].header.file_size - 100)
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(finetuned[0]))}: file shrank while being hashed"):
            with Hashers(files_to_hash([*b.files, *f1.files])) as hashers:
                hashers.finish()
        assert f1.files[0].needs_hashing  # no digest of a file that changed
    assert not negmerge_threads()


def test_read_prepared_gives_one_slice_in_the_compute_dtype(files3):
    base, _, dense = files3
    with open_checkpoint(base, digest=False) as b:
        job = TensorJob("h", (3, 700), torch.float32, (Source(b, "h"),), torch.float64)
        piece = Engine(CPU, smallest_budget()).read_prepared(job, job.sources[0], 100, 1900)
    assert piece.dtype == torch.float64
    assert torch.equal(piece, dense["h"][0].flatten()[100:1900].double())


# -- NaN and Inf -----------------------------------------------------------------------------------


def poisoned(tmp_path: Path, files3, value: float, index: int = 3500, which: int = 1) -> Path:
    """Fine-tune ``which`` rewritten with ``value`` at flat element ``index`` of tensor "a"."""
    _, _, dense = files3
    tensors = {name: values[1 + which].clone() for name, values in dense.items()}
    tensors["a"].view(-1)[index] = value
    path = tmp_path / f"ft{which + 1}.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_nonfinite_input_element_is_reported_naming_file_and_tensor(tmp_path, files3, value):
    base, finetuned, _ = files3
    poisoned(tmp_path, files3, value)  # element 3500: in the fourth 1024-element slice
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1, \
            open_checkpoint(finetuned[1], digest=False) as f2:
        with pytest.raises(CheckpointError) as caught:
            run(Engine(CPU, smallest_budget()), jobs_for([b, f1, f2]), sum_of_taus)
    message = str(caught.value)
    assert message.startswith(f"{finetuned[1]}: tensor 'a' contains NaN or Inf")
    assert str(finetuned[0]) not in message and str(base) not in message
    assert not negmerge_threads()


def test_nonfinite_inputs_pass_when_the_check_is_off(tmp_path, files3):
    base, finetuned, dense = files3
    poisoned(tmp_path, files3, float("nan"))
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1, \
            open_checkpoint(finetuned[1], digest=False) as f2:
        _, written, _ = run(Engine(CPU, smallest_budget(), check_finite=False), jobs_for([b, f1, f2], ["a"]),
                            sum_of_taus)
    result = torch.cat(written["a"])
    assert torch.isnan(result).nonzero().flatten().tolist() == [3500]


def test_finite_inputs_whose_sum_overflows_are_not_reported(tmp_path):
    """The fast check sums the slice; a finite slice whose sum overflows is confirmed finite."""
    path = tmp_path / "huge.safetensors"
    save_file({"x": torch.full((3000,), 3e38)}, str(path))
    with open_checkpoint(path, digest=False) as checkpoint:
        job = TensorJob("x", (3000,), torch.float32, (Source(checkpoint, "x"),))
        _, written, _ = run(Engine(CPU, smallest_budget()), [job], lambda job, start, stop, s: next(s))
    assert torch.equal(torch.cat(written["x"]), torch.full((3000,), 3e38))


def test_check_sum_names_the_first_source_holding_a_nonfinite_element(tmp_path, files3):
    base, finetuned, _ = files3
    poisoned(tmp_path, files3, float("inf"), index=10, which=0)
    poisoned(tmp_path, files3, float("nan"), index=10, which=1)
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1, \
            open_checkpoint(finetuned[1], digest=False) as f2:
        job = jobs_for([b, f1, f2], ["a"])[0]
        total = sum(c.read("a", 0, 1024).float() for c in (b, f1, f2))
        with pytest.raises(CheckpointError) as caught:
            check_sum(job, 0, 1024, total)
        assert str(caught.value).startswith(f"{finetuned[0]}: tensor 'a' contains NaN or Inf")
        # the slice after the poisoned elements is clean: its sum passes
        check_sum(job, 1024, 2048, sum(c.read("a", 1024, 2048).float() for c in (b, f1, f2)))


def test_check_sum_forgives_an_overflowing_sum_of_finite_inputs(tmp_path):
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"big{index}.safetensors")
        save_file({"x": torch.full((100,), 3e38)}, str(paths[-1]))
    with open_checkpoint(paths[0], digest=False) as c0, open_checkpoint(paths[1], digest=False) as c1:
        job = TensorJob("x", (100,), torch.float32, (Source(c0, "x"), Source(c1, "x")))
        total = c0.read("x") + c1.read("x")
        assert torch.isinf(total).all()
        check_sum(job, 0, 100, total)  # no input is at fault: left to the check of the result


# -- failures stop every thread ----------------------------------------------------------------


def test_an_error_in_the_process_propagates_and_stops_the_threads(files3):
    base, finetuned, _ = files3
    threads_before = torch.get_num_threads()
    calls = []

    def failing(job, start, stop, slices):
        calls.append(start)
        if len(calls) == 3:
            raise ValueError("boom in slice 3")
        return sum_of_taus(job, start, stop, slices)

    with open_checkpoint(base, digest=True, rehash=True) as b, \
            open_checkpoint(finetuned[0], digest=True, rehash=True) as f1:
        with pytest.raises(ValueError, match="boom in slice 3"), Hashers(files_to_hash([*b.files, *f1.files])):
            run(Engine(CPU, smallest_budget()), jobs_for([b, f1]), failing)
    assert len(calls) == 3
    assert not negmerge_threads()
    assert torch.get_num_threads() == threads_before


def test_a_read_failure_reaches_the_main_thread(files3):
    base, finetuned, _ = files3
    with open_checkpoint(base, digest=False) as b, open_checkpoint(finetuned[0], digest=False) as f1:
        entry = f1.entry("a")
        os.truncate(finetuned[0], entry.begin + entry.nbytes // 2)  # after opening: mid-tensor
        with pytest.raises(CheckpointError, match=r"tensor 'a'.*truncated"):
            run(Engine(CPU, smallest_budget()), jobs_for([b, f1]), sum_of_taus)
    assert not negmerge_threads()


# -- the write-behind thread --------------------------------------------------------------------


def test_write_behind_writes_everything_in_order_on_its_own_thread():
    written = []
    results = [(f"t{i % 3}", torch.full((5,), float(i))) for i in range(12)]
    with WriteBehind(lambda name, r: written.append((name, r, threading.current_thread().name))) as sink:
        for name, result in results:
            sink.put(name, result)
        sink.finish()
    assert [(n, r) for n, r, _ in written] == results
    assert {thread for _, _, thread in written} == {"negmerge-writer"}
    assert not negmerge_threads()


def test_write_behind_raises_the_first_write_error_in_the_caller():
    written = []

    def write(name, result):
        if name == "bad":
            raise OSError("disk full")
        written.append(name)

    with pytest.raises(OSError, match="disk full"):
        with WriteBehind(write) as sink:
            for name in ["ok1", "bad", "ok2", "ok3", "ok4", "ok5", "ok6"]:
                sink.put(name, torch.zeros(1))
            sink.finish()
    assert written == ["ok1"]  # nothing written after the failure
    assert not negmerge_threads()
