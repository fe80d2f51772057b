"""The streaming engine's background threads: the reader that fetches slices ahead of the
arithmetic (:class:`Prefetcher`), the writer behind it (:class:`WriteBehind`), and the hashers
that compute the inputs' SHA-256 beside them (:class:`Hashers`).

``pread``, SHA-256 and torch's kernels release the GIL, so reading, hashing, the main thread's
arithmetic and writing overlap. Each queue holds only a few items, so memory stays within the
engine's budget (:meth:`negmerge_cli.arithmetic.streaming.Engine.slice_elements` counts them); a
hasher holds one small block. No thread is a daemon: each is always stopped and joined.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import Callable, Iterator

import torch

from negmerge_cli.checkpoint.reader import SafetensorsFile

PREFETCH_DEPTH = 4  # slices read ahead of the main thread
WRITE_DEPTH = 2  # results waiting for the writer thread
# SHA-256 runs at about 1.8 GB/s per core, slower than a merge reads: every core hashes (up to 16,
# which outrun the page cache anyway)
HASH_THREADS = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _stop_and_join(threads: list[threading.Thread], stop: threading.Event,
                   unblock: Callable[[], None] = lambda: None) -> None:
    """Stop ``threads`` and join them, even when Ctrl-C lands while they start. A daemon thread
    killed inside torch at interpreter exit would abort the process ("terminate called without an
    active exception"), so none is a daemon and all are always joined."""
    stop.set()
    for thread in threads:
        if thread.ident is None:
            continue  # never started
        while True:
            try:
                thread.join(timeout=0.05)
            except RuntimeError:  # interrupted inside start(): not marked as started yet
                continue
            if not thread.is_alive():
                break
            unblock()


def _start(threads: list[threading.Thread], stop: threading.Event, unblock: Callable[[], None]) -> None:
    try:
        for thread in threads:
            thread.start()
    except BaseException:
        _stop_and_join(threads, stop, unblock)
        raise


class Prefetcher:
    """Reads the planned items a few ahead in one thread, so reading and the main thread's
    arithmetic overlap. Items reach the main thread in plan order."""

    def __init__(self, items: Iterator[tuple], read: Callable[..., torch.Tensor]):
        self._items, self._read = items, read
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_all, name="negmerge-reader")

    def __enter__(self) -> "Prefetcher":
        _start([self._thread], self._stop, self._unblock)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_and_join([self._thread], self._stop, self._unblock)

    def _unblock(self) -> None:  # make room in a full queue
        try:
            self._queue.get_nowait()
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
                self._put(self._read(*item))
            self._put(_END)
        except BaseException as error:  # handed on to the main thread, which raises it
            self._put(_Failure(error))

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue


def files_to_hash(files: list) -> list[SafetensorsFile]:
    """Of checkpoints' ``files``, those whose digest is unknown, largest first, each once (a file
    listed twice, as merge's base can be, is hashed once); the few others (small files of a LoRA
    adapter) are hashed when their digest is first asked."""
    pending = [f for f in dict.fromkeys(files) if isinstance(f, SafetensorsFile) and f.needs_hashing]
    return sorted(pending, key=lambda f: f.header.file_size, reverse=True)


class Hashers:
    """The SHA-256 of whole input files on ``HASH_THREADS`` threads, while the stream runs.

    Hashing apart from the merge's reads (each file read once more, a block at a time, from the page
    cache) lets it use every core, whatever order the merge reads in and however fast its
    arithmetic goes. Files are taken largest first, one per thread at a time (a file's hash is
    sequential). ``on_done`` runs on the thread that hashes the last file, as soon as every digest
    is known (the writer then hashes the output as it writes it). :meth:`finish` waits for every
    digest and raises the first error; leaving the context stops the threads within one block and
    joins them."""

    def __init__(self, files: list, on_done: Callable[[], None] = lambda: None,
                 on_bytes: Callable[[int], None] = lambda n: None):
        """``files``: the files to hash (:func:`files_to_hash`); ``on_bytes`` is told each block
        hashed, from the hashing threads (progress)."""
        self._todo = deque(files)
        self._left, self._on_done, self._count_lock = len(self._todo), on_done, threading.Lock()
        self._on_bytes = on_bytes
        self._failure: _Failure | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._hash_all, name=f"negmerge-hasher-{i}")
                         for i in range(min(HASH_THREADS, len(self._todo)))]

    def __enter__(self) -> "Hashers":
        _start(self._threads, self._stop, lambda: None)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_and_join(self._threads, self._stop)

    def finish(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._failure is not None:
            raise self._failure.error

    def _hash_all(self) -> None:
        while not self._stop.is_set():
            try:
                file = self._todo.popleft()
            except IndexError:
                return
            try:
                file.compute_digest(self._stop, self._on_bytes)
                if self._stop.is_set():
                    return
                with self._count_lock:
                    self._left -= 1
                    last = self._left == 0
                if last:
                    self._on_done()
            except BaseException as error:  # raised in the main thread by finish()
                self._failure = _Failure(error)
                self._stop.set()
                return


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
        _start([self._thread], self._stop, lambda: None)
        return self

    def __exit__(self, *exc: object) -> None:
        # a thread not yet marked as started sees the stop flag within 50 ms and ends by itself
        _stop_and_join([self._thread], self._stop)

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
