"""Child runs at once: a pool of threads, each watching one child from start to exit.

Pure: no pytest.  The plugin submits the runs of the current test and of the tests after it
(keyed by test, interpreter, policy and round) and takes their results in the order a
sequential session would, so verdicts, tallies and reports do not depend on ``jobs``.
A run's timeouts start in the child (from the end of its test), so a child waiting for a
core does not hang on our account.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Hashable, Iterable, Optional, TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_jobs(workers: int = 1) -> int:
    """One run per usable core, shared between ``workers`` processes (xdist)."""
    return max(1, usable_cores() // max(1, workers))


class RunPool:
    """Runs submitted ahead of time and taken in order; with ``jobs`` == 1 every run
    happens when it is taken, as in a session without the pool."""

    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        #: Set when the session ends or is interrupted: running children are stopped.
        self.cancel = threading.Event()
        self._executor: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(self.jobs, thread_name_prefix="daemonexit-run")
            if self.jobs > 1
            else None
        )
        self._futures: Dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()

    @property
    def parallel(self) -> bool:
        return self._executor is not None

    def submit(self, key: Hashable, fn: Callable[[], Any]) -> None:
        """Start ``fn`` for ``key`` when a thread is free (nothing with ``jobs`` == 1)."""
        if self._executor is None or self.cancel.is_set():
            return
        with self._lock:
            if key not in self._futures:
                self._futures[key] = self._executor.submit(fn)

    def take(self, key: Hashable, fn: Callable[[], T]) -> T:
        """The result for ``key``: from a submitted run, else ``fn`` called now."""
        with self._lock:
            future = self._futures.pop(key, None)
        if future is None or future.cancelled():
            return fn()
        result: T = future.result()
        return result

    def discard(self, keys: Iterable[Hashable]) -> None:
        """Runs no longer needed: not started ones are cancelled, started ones finish."""
        with self._lock:
            for key in keys:
                future = self._futures.pop(key, None)
                if future is not None:
                    future.cancel()

    def pending(self) -> int:
        with self._lock:
            return sum(1 for f in self._futures.values() if not f.done())

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._futures

    def shutdown(self) -> None:
        """Stop everything: cancel what has not started, stop running children, wait."""
        self.cancel.set()
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
        for future in futures:
            future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
