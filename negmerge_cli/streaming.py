"""The streaming engine: tensor by tensor, slice by slice, over several checkpoints at once.

Background threads read the slices and hash their bytes (``pread`` and SHA-256 release the GIL)
while the main thread moves them to the compute device, computes, and hands results to the writer. Only a
few slices are in flight at a time, so memory is bounded by the budget whatever the model size and
however many inputs there are.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Callable, Iterator

import torch

from negmerge_cli.checkpoint.reader import Checkpoint
from negmerge_cli.errors import CheckpointError, UsageError

PREFETCH_DEPTH = 4
# Slices this size keep CPU kernels in cache and per-call overhead negligible; GPUs like them big.
MAX_SLICE_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


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
    check_finite: bool = True
    on_bytes: Callable[[int], None] = lambda n: None
    pin: bool = field(init=False)

    def __post_init__(self) -> None:
        self.pin = self.device.type == "cuda"

    # -- slicing ----------------------------------------------------------------------------
    def slice_elements(self, job: TensorJob, float_buffers: int, cache_sized: bool = True) -> int:
        """How many elements per slice so that in-flight reads plus ``float_buffers`` working
        buffers per element fit in the budget (and, if ``cache_sized``, the CPU caches)."""
        per_element = PREFETCH_DEPTH * 8 + 4 * (float_buffers + 3)
        fit = self.budget_bytes // per_element
        if fit < 1024:
            raise UsageError(f"--max-memory {self.budget_bytes} bytes: too small to stream (need >= {1024 * per_element})")
        cap = MAX_SLICE_ELEMENTS.get(self.device.type, 1 << 20) if cache_sized else job.numel
        return max(1, min(job.numel, fit, cap))

    def slices(self, job: TensorJob, float_buffers: int, cache_sized: bool = True) -> list[tuple[int, int]]:
        step = self.slice_elements(job, float_buffers, cache_sized)
        return [(start, min(start + step, job.numel)) for start in range(0, job.numel, step)] or [(0, 0)]

    # -- reading ----------------------------------------------------------------------------
    def read(self, job: TensorJob, source: Source, start: int, stop: int) -> tuple[torch.Tensor, Callable[[], None]]:
        """One slice of one source, raw (stored dtype, CPU), and the step that hashes its bytes
        (to run before the slice is modified). Thread-safe."""
        if source.checkpoint is None:
            return torch.zeros(stop - start, dtype=job.compute_dtype or job.out_dtype), lambda: None
        return source.checkpoint.read_unhashed(source.name, start, stop, pin=self.pin)

    def prepare(self, job: TensorJob, source: Source, raw: torch.Tensor, count: bool = True) -> torch.Tensor:
        """Raw slice -> compute device and dtype, checked for NaN/Inf."""
        if count and source.checkpoint is not None:
            self.on_bytes(raw.numel() * raw.element_size())
        if job.compute_dtype is None:
            return raw
        tensor = raw.to(self.device, non_blocking=True).to(job.compute_dtype)
        if self.check_finite and source.checkpoint is not None:
            _check_finite(tensor, source, job.name)
        return tensor

    def read_prepared(self, job: TensorJob, source: Source, start: int, stop: int) -> torch.Tensor:
        """A slice read synchronously, outside the planned stream (e.g. a per-tensor statistic)."""
        raw, hash_step = self.read(job, source, start, stop)
        hash_step()
        return self.prepare(job, source, raw, count=False)

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
        with _Prefetcher(reads, self.read) as prefetched, _compute_threads(self.device):
            for job, slices in plan:
                before_job(job, self)
                for start, stop in slices:
                    incoming = (self.prepare(job, s, prefetched.next()) for s in job.sources)
                    result = process(job, start, stop, incoming)
                    for _ in incoming:  # whatever the method left unread, to keep reads in step
                        pass
                    write(job.name, result.to(job.out_dtype))


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


def _check_finite(tensor: torch.Tensor, source: Source, name: str) -> None:
    # One reduction instead of an elementwise test: NaN or Inf anywhere makes the sum non-finite.
    # A finite sum that overflows is confirmed (and forgiven) by the exact test.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise CheckpointError(
            f"{source.label}: tensor '{name}' contains NaN or Inf (pass --allow-nonfinite to accept)"
        )


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Prefetcher:
    """Reads the planned items a few ahead in one thread and hashes them in another, so reading,
    hashing and the main thread's arithmetic overlap; items reach the main thread in plan order,
    hashed (hashing must see the bytes before the arithmetic changes them in place).

    The threads are not daemons and are always stopped and joined, even when Ctrl-C lands while
    they start: a daemon thread killed inside torch at interpreter exit aborts the process
    ("terminate called without an active exception")."""

    def __init__(self, items: Iterator[tuple], read: Callable[..., tuple[torch.Tensor, Callable[[], None]]]):
        self._items, self._read = items, read
        self._read_queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read_all, name="negmerge-reader"),
                         threading.Thread(target=self._hash_all, name="negmerge-hasher")]

    def __enter__(self) -> "_Prefetcher":
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is None:
                continue  # never started
            while True:
                try:
                    thread.join(timeout=0.05)
                except RuntimeError:  # interrupted inside start(): not marked as started yet
                    continue
                if not thread.is_alive():
                    break
                for waiting in (self._read_queue, self._queue):  # unblock a full queue
                    try:
                        waiting.get_nowait()
                    except queue.Empty:
                        pass

    def next(self) -> torch.Tensor:
        item = self._queue.get()
        if isinstance(item, _Failure):
            raise item.error
        if item is _END:
            raise RuntimeError("prefetcher ran out of planned reads")
        return item

    def _read_all(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._put(self._read_queue, self._read(*item))
            self._put(self._read_queue, _END)
        except BaseException as error:  # handed on to the main thread, which raises it
            self._put(self._read_queue, _Failure(error))

    def _hash_all(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._read_queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END or isinstance(item, _Failure):
                self._put(self._queue, item)
                return
            tensor, hash_step = item
            try:
                hash_step()
            except BaseException as error:
                self._put(self._queue, _Failure(error))
                return
            self._put(self._queue, tensor)

    def _put(self, target: queue.Queue, item: object) -> None:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
