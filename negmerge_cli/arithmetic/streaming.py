"""The streaming engine: tensor by tensor, slice by slice, over several checkpoints at once.

A background thread (:mod:`negmerge_cli.arithmetic.background`) reads the slices while the main
thread moves them to the compute device, computes, and hands results to the writer.
Only a few slices are in flight at a time, so memory is bounded by the budget whatever the model
size and however many inputs there are.
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Callable, Iterator

import torch

from negmerge_cli.arithmetic.background import PREFETCH_DEPTH, WRITE_DEPTH, Prefetcher
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.core.errors import CheckpointError, UsageError

# Slices this size keep CPU kernels in cache and per-call overhead negligible; GPUs like them big.
# On the CPU, 256K elements (1 MB of float32 per buffer) keep a merge's few working buffers near
# the core's L2 cache: measured 15-20% less CPU than 1M for negmerge over 12 ViT-B/32 vectors.
MAX_SLICE_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 26}


@dataclass(frozen=True)
class Source:
    """Tensor ``name`` of ``checkpoint``; ``checkpoint=None`` stands for zeros (missing-as-zero)."""

    checkpoint: Checkpoint | None
    name: str

    @property
    def label(self) -> str:
        return str(self.checkpoint.path) if self.checkpoint else "(zeros)"


@dataclass(frozen=True)
class TensorJob:
    """One output tensor computed from aligned slices of its sources."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    sources: tuple[Source, ...]
    compute_dtype: torch.dtype | None = torch.float32  # None: pass raw bytes through (copies)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def read_bytes(self) -> int:
        return sum(s.checkpoint.entry(s.name).nbytes for s in self.sources if s.checkpoint)


# process(job, start, stop, slices) -> result slice; slices arrive one source at a time.
Process = Callable[[TensorJob, int, int, Iterator[torch.Tensor]], torch.Tensor]


@dataclass
class Engine:
    device: torch.device
    budget_bytes: int
    check_finite: bool = True  # every source slice, as it arrives (unless the process checks a sum)
    on_bytes: Callable[[int], None] = lambda n: None
    pin: bool = field(init=False)

    def __post_init__(self) -> None:
        self.pin = self.device.type == "cuda"

    # -- slicing ----------------------------------------------------------------------------
    def slice_elements(self, job: TensorJob, float_buffers: int, cache_sized: bool = True) -> int:
        """How many elements per slice so that in-flight reads plus ``float_buffers`` working
        buffers per element fit in the budget (and, if ``cache_sized``, the CPU caches)."""
        per_element = PREFETCH_DEPTH * 8 + 4 * (float_buffers + 3 + WRITE_DEPTH)
        fit = self.budget_bytes // per_element
        if fit < 1024:
            raise UsageError(f"--max-memory {self.budget_bytes} bytes: too small to stream (need >= {1024 * per_element})")
        cap = MAX_SLICE_ELEMENTS.get(self.device.type, 1 << 20) if cache_sized else job.numel
        return max(1, min(job.numel, fit, cap))

    def slices(self, job: TensorJob, float_buffers: int, cache_sized: bool = True) -> list[tuple[int, int]]:
        step = self.slice_elements(job, float_buffers, cache_sized)
        return [(start, min(start + step, job.numel)) for start in range(0, job.numel, step)] or [(0, 0)]

    # -- reading ----------------------------------------------------------------------------
    def read(self, job: TensorJob, source: Source, start: int, stop: int) -> torch.Tensor:
        """One slice of one source, raw (stored dtype, CPU, a fresh buffer). Thread-safe."""
        if source.checkpoint is None:
            return torch.zeros(stop - start, dtype=job.compute_dtype or job.out_dtype)
        return source.checkpoint.read(source.name, start, stop, pin=self.pin)

    def prepare(self, job: TensorJob, source: Source, raw: torch.Tensor, count: bool = True) -> torch.Tensor:
        """Raw slice -> compute device and dtype, checked for NaN/Inf."""
        if count and source.checkpoint is not None:
            self.on_bytes(raw.numel() * raw.element_size())
        if job.compute_dtype is None:
            return raw
        tensor = raw if raw.device == self.device else raw.to(self.device, non_blocking=True)
        if tensor.dtype != job.compute_dtype:
            tensor = tensor.to(job.compute_dtype)
        if self.check_finite and source.checkpoint is not None:
            _check_finite(tensor, source, job.name)
        return tensor

    def read_prepared(self, job: TensorJob, source: Source, start: int, stop: int) -> torch.Tensor:
        """A slice read synchronously, outside the planned stream (e.g. a per-tensor statistic)."""
        return self.prepare(job, source, self.read(job, source, start, stop), count=False)

    # -- the loop -----------------------------------------------------------------------------
    def run(
        self,
        jobs: list[TensorJob],
        process: Process,
        write: Callable[[str, torch.Tensor], None],
        float_buffers: Callable[[TensorJob], int],
        before_job: Callable[[TensorJob, "Engine"], None] = lambda job, engine: None,
    ) -> None:
        plan = [(job, self.slices(job, float_buffers(job))) for job in jobs]
        reads = (
            (job, source, start, stop)
            for job, slices in plan
            for start, stop in slices
            for source in job.sources
        )
        _reuse_freed_memory()
        with Prefetcher(reads, self.read) as prefetched, _compute_threads(self.device):
            for job, slices in plan:
                before_job(job, self)
                for start, stop in slices:
                    incoming = (self.prepare(job, s, prefetched.next()) for s in job.sources)
                    result = process(job, start, stop, incoming)
                    for _ in incoming:  # whatever the method left unread, to keep reads in step
                        pass
                    write(job.name, result if result.dtype == job.out_dtype else result.to(job.out_dtype))


@functools.cache
def _reuse_freed_memory() -> None:
    """Ask glibc to recycle freed slice buffers instead of unmapping them.

    Every slice is a fresh multi-megabyte tensor; by default glibc serves those with mmap and
    unmaps them on free, so each new slice page-faults and is zeroed by the kernel again, which
    costs about as much as reading it. Raising the mmap and trim thresholds keeps the memory in the
    heap for the next slice (process-wide, once; a no-op outside glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 256 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextmanager
def _compute_threads(device: torch.device) -> Iterator[None]:
    """Leave one core to the reader and hasher threads when computing on the CPU.

    Elementwise kernels on slices this size are memory-bound: an extra thread gains little, and
    competing with the reader for the last core costs a lot (measured 7x slower under load)."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(previous, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_sum(job: TensorJob, start: int, stop: int, total: torch.Tensor) -> None:
    """The NaN/Inf check of every source of a slice, done once on their running sum ``total``.

    Any NaN or Inf among the summands makes the sum NaN or Inf, so a finite sum clears them all.
    Otherwise the sources are read again (the error path only) and checked one by one, in order,
    so the error names the same file and tensor as checking each source as it arrives would. If
    none holds a NaN or Inf, the sum overflowed: not an input's fault, left to the result check."""
    if bool(torch.isfinite(total.sum())) or bool(torch.isfinite(total).all()):
        return
    for source in job.sources:
        if source.checkpoint is not None:
            _check_finite(source.checkpoint.read(source.name, start, stop).to(job.compute_dtype), source, job.name)


def _check_finite(tensor: torch.Tensor, source: Source, name: str) -> None:
    # One reduction instead of an elementwise test: NaN or Inf anywhere makes the sum non-finite.
    # A finite sum that overflows is confirmed (and forgiven) by the exact test.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise CheckpointError(
            f"{source.label}: tensor '{name}' contains NaN or Inf (pass --allow-nonfinite to accept)"
        )

