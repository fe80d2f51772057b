"""The streaming engine: tensor by tensor, slice by slice, over several checkpoints at once.

Background threads read the slices and hash their bytes (``pread`` and SHA-256 release the GIL)
while the main thread moves them to the compute device, computes, and hands results to the writer. Only a
few slices are in flight at a time, so memory is bounded by the budget whatever the model size and
however many inputs there are. Files whose digest is cached are not hashed at all; the others are
hashed on a few threads, one file always on the same thread (its hash is sequential).
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

from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.reader import NO_HASH, HashStep
from negmerge_cli.core.errors import CheckpointError, UsageError

PREFETCH_DEPTH = 4
# SHA-256 runs at about 1 GB/s per core: one thread would be the slowest stage of a merge that
# hashes its inputs, so files are spread over a few (each file's bytes stay in order on one).
HASH_THREADS = max(2, min(4, (os.cpu_count() or 2) // 2))
WRITE_DEPTH = 2  # results waiting for the writer thread
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
    def read(self, job: TensorJob, source: Source, start: int, stop: int) -> tuple[torch.Tensor, HashStep]:
        """One slice of one source, raw (stored dtype, CPU), and the step that hashes its bytes
        (to run before the slice is modified). Thread-safe."""
        if source.checkpoint is None:
            return torch.zeros(stop - start, dtype=job.compute_dtype or job.out_dtype), NO_HASH
        return source.checkpoint.read_unhashed(source.name, start, stop, pin=self.pin)

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
            raw, _ = source.checkpoint.read_unhashed(source.name, start, stop)
            _check_finite(raw.to(job.compute_dtype), source, job.name)


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


class _Slice:
    """One read slice on its way to the main thread; ``hashed`` is set once its bytes are hashed."""

    __slots__ = ("tensor", "hashed")

    def __init__(self, tensor: torch.Tensor, needs_hashing: bool):
        self.tensor = tensor
        self.hashed = threading.Event() if needs_hashing else None


class _Prefetcher:
    """Reads the planned items a few ahead in one thread and hashes them on ``HASH_THREADS`` others,
    so reading, hashing and the main thread's arithmetic overlap. Items reach the main thread in
    plan order, hashed (hashing must see the bytes before the arithmetic changes them in place);
    items with nothing to hash skip the hashing threads.

    The threads are not daemons and are always stopped and joined, even when Ctrl-C lands while
    they start: a daemon thread killed inside torch at interpreter exit aborts the process
    ("terminate called without an active exception")."""

    def __init__(self, items: Iterator[tuple], read: Callable[..., tuple[torch.Tensor, HashStep]]):
        self._items, self._read = items, read
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._lanes: list[queue.Queue] = [queue.Queue(maxsize=PREFETCH_DEPTH) for _ in range(HASH_THREADS)]
        self._lane_of: dict[int, int] = {}  # id(hasher) -> lane, assigned round-robin
        self._failure: _Failure | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read_all, name="negmerge-reader")] + [
            threading.Thread(target=self._hash_all, args=(lane,), name=f"negmerge-hasher-{i}")
            for i, lane in enumerate(self._lanes)]

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
                for waiting in (self._queue, *self._lanes):  # unblock a full queue
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
        if item.hashed is not None:
            while not item.hashed.wait(0.05):
                if self._failure is not None:  # a hashing thread failed: nothing more gets hashed
                    raise self._failure.error
        return item.tensor

    def _read_all(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                tensor, hash_step = self._read(*item)
                piece = _Slice(tensor, hash_step.hasher is not None)
                if piece.hashed is not None:
                    self._put(self._lanes[self._lane(hash_step)], (hash_step, piece.hashed))
                self._put(self._queue, piece)
            self._put(self._queue, _END)
        except BaseException as error:  # handed on to the main thread, which raises it
            self._put(self._queue, _Failure(error))
        finally:
            for lane in self._lanes:
                self._put(lane, _END)

    def _lane(self, step: HashStep) -> int:
        return self._lane_of.setdefault(id(step.hasher), len(self._lane_of) % len(self._lanes))

    def _hash_all(self, lane: queue.Queue) -> None:
        while not self._stop.is_set():
            try:
                item = lane.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                return
            hash_step, hashed = item
            try:
                hash_step()
            except BaseException as error:
                self._failure = _Failure(error)
                return
            hashed.set()

    def _put(self, target: queue.Queue, item: object) -> None:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.05)
                return
            except queue.Full:
                continue


class WriteBehind:
    """Hands results to ``write`` on a background thread, so that writing a file (page-cache
    allocation in the kernel) and hashing it overlap the main thread's arithmetic.

    At most ``WRITE_DEPTH`` results wait; the first error is raised in the main thread by the next
    :meth:`put` or by :meth:`finish`, which returns once everything is written. Leaving the context
    stops the thread and drops what is still queued (the output is discarded anyway)."""

    def __init__(self, write: Callable[[str, torch.Tensor], None]):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=WRITE_DEPTH)
        self._failure: _Failure | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="negmerge-writer")

    def __enter__(self) -> "WriteBehind":
        try:
            self._thread.start()
        except BaseException:  # Ctrl-C inside start(): the thread may run, and must be stopped
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        # not a daemon, so always joined (see _Prefetcher); a thread not yet marked as started
        # sees the stop flag within 50 ms and ends by itself
        self._stop.set()
        if self._thread.ident is None:
            return
        while self._thread.is_alive():
            try:
                self._thread.join(timeout=0.05)
            except RuntimeError:  # interrupted inside start(): not marked as started yet
                continue

    def put(self, name: str, result: torch.Tensor) -> None:
        self._raise_failure()
        while True:
            try:
                self._queue.put((name, result), timeout=0.05)
                return
            except queue.Full:
                self._raise_failure()

    def finish(self) -> None:
        self.put("", _END)  # type: ignore[arg-type]
        self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure.error

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name, result = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if result is _END:
                return
            try:
                self._write(name, result)
            except BaseException as error:  # raised in the main thread
                self._failure = _Failure(error)
                return
