"""Micro-batching: concurrent callers share one encoder forward and one FAISS call.

    batcher = Batcher(process, window_ms=2, max_batch=32)   # process(list[job]) -> list[result]
    result = batcher.submit(job)                            # from any number of threads

Leader-collects: the first caller to find the lane idle becomes the leader, takes every job
queued so far (up to `max_batch` items), runs `process` once on them and hands each caller its own
result; callers that arrive meanwhile queue up for the next batch. The leader waits up to
`window_ms` for company only when others are around (the queue or the previous batch held more than
one job), so a lone client never pays the window. `window_ms=0` turns batching off: `submit`
calls `process([job])` directly, concurrently.

For array work (e.g. FAISS search benchmarks), `stacking(fn)` turns a function of one stacked
array into a `process`:

    batcher = Batcher(stacking(lambda xq: index.search(xq, k)), window_ms=2)
    D, I = batcher.submit(xq)  # xq (n, d): this caller's rows of the batched search
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    job: T
    size: int
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    batches: int = 0  # process() calls
    jobs: int = 0  # jobs processed
    items: int = 0  # items (sum of sizes) processed
    largest: int = 0  # most items in one batch

    def mean_items(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class Batcher(Generic[T, R]):
    """Run `process` on batches of jobs submitted concurrently; each caller gets its own result."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        *,
        window_ms: float = 2.0,
        max_batch: int = 32,
        size: Callable[[T], int] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.process = process
        self.window = max(0.0, window_ms) / 1000.0
        self.max_batch = max_batch
        self.size = size or _size_of
        self.stats = BatchStats()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the leader waits here for company
        self._released = threading.Condition(self._lock)  # followers wait here for their result
        self._queue: deque[_Pending[T, R]] = deque()
        self._busy = False
        self._last_jobs = 1

    @property
    def enabled(self) -> bool:
        return self.window > 0

    @property
    def queued(self) -> int:
        """Jobs waiting for a batch (not counting the one being processed)."""
        with self._lock:
            return len(self._queue)

    def submit(self, job: T) -> R:
        """Process `job`, batched with whatever other threads submit at the same time."""
        if not self.enabled:
            result = self.process([job])
            self._count([job])
            return result[0]
        mine = _Pending[T, R](job, max(1, self.size(job)))
        with self._lock:
            self._queue.append(mine)
            self._arrived.notify()
        while True:
            with self._lock:
                while self._busy and not mine.done:
                    self._released.wait()
                if mine.done:
                    break
                self._busy = True
                if len(self._queue) > 1 or self._last_jobs > 1:
                    self._wait_for_company()
                batch = self._take()
            self._run(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _wait_for_company(self) -> None:
        """Leader, lock held: wait up to the window for the batch to fill."""
        deadline = time.monotonic() + self.window
        while sum(p.size for p in self._queue) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.wait(remaining)

    def _take(self) -> list[_Pending[T, R]]:
        """Lock held: the oldest jobs, up to max_batch items (always at least one job)."""
        batch = [self._queue.popleft()]
        total = batch[0].size
        while self._queue and total + self._queue[0].size <= self.max_batch:
            total += self._queue[0].size
            batch.append(self._queue.popleft())
        return batch

    def _run(self, batch: list[_Pending[T, R]]) -> None:
        """Leader, lock released: process the batch and hand out results."""
        try:
            results = self.process([p.job for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"process returned {len(results)} results for {len(batch)} jobs")
            for p, r in zip(batch, results, strict=True):
                p.result = r
        except BaseException as e:  # every caller of this batch sees the failure
            for p in batch:
                p.error = e
        with self._lock:
            for p in batch:
                p.done = True
            self._busy = False
            self._last_jobs = len(batch)
            self._count([p.job for p in batch], locked=True)
            self._released.notify_all()

    def _count(self, jobs: list[T], locked: bool = False) -> None:
        n = sum(max(1, self.size(j)) for j in jobs)
        if locked:
            self._add_stats(len(jobs), n)
        else:
            with self._lock:
                self._add_stats(len(jobs), n)

    def _add_stats(self, jobs: int, items: int) -> None:
        self.stats.batches += 1
        self.stats.jobs += jobs
        self.stats.items += items
        self.stats.largest = max(self.stats.largest, items)


def _size_of(job: Any) -> int:
    """Items in a job: rows of an array, else 1."""
    shape = getattr(job, "shape", None)
    return int(shape[0]) if shape else 1


def stacking(fn: Callable[[np.ndarray], Any]) -> Callable[[list[np.ndarray]], list[Any]]:
    """A `process` that stacks the jobs' rows, calls `fn` once, and splits its output(s) back."""

    def process(jobs: list[np.ndarray]) -> list[Any]:
        sizes = [len(j) for j in jobs]
        out = fn(np.concatenate(jobs) if len(jobs) > 1 else jobs[0])
        cuts = np.cumsum(sizes)[:-1]
        if isinstance(out, tuple):
            parts = [np.split(np.asarray(o), cuts) for o in out]
            return [tuple(p[i] for p in parts) for i in range(len(jobs))]
        return list(np.split(np.asarray(out), cuts))

    return process


__all__ = ["BatchStats", "Batcher", "stacking"]
