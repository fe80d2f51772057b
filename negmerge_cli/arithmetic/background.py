"""The streaming engine's background threads: the reader and hashers that fetch slices ahead of
the arithmetic (:class:`Prefetcher`), and the writer behind it (:class:`WriteBehind`).

``pread`` and SHA-256 release the GIL, so reading, hashing, the main thread's arithmetic and
writing overlap. Each queue holds only a few items, so memory stays within the engine's budget
(:meth:`negmerge_cli.arithmetic.streaming.Engine.slice_elements` counts them). Files whose digest is
cached are not hashed at all; the others are hashed on a few threads, one file always on the same
thread (its hash is sequential). No thread is a daemon: each is always stopped and joined.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable, Iterator

import torch

from negmerge_cli.checkpoint.reader import HashStep

PREFETCH_DEPTH = 4  # slices read ahead of the main thread
# SHA-256 runs at about 1 GB/s per core: one thread would be the slowest stage of a merge that
# hashes its inputs, so files are spread over a few (each file's bytes stay in order on one).
HASH_THREADS = max(2, min(4, (os.cpu_count() or 2) // 2))
WRITE_DEPTH = 2  # results waiting for the writer thread

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


class Prefetcher:
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

    def __enter__(self) -> "Prefetcher":
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
        # not a daemon, so always joined (see Prefetcher); a thread not yet marked as started
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
