"""One-at-a-time inference: a worker thread and a bounded queue of waiting requests."""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["QueueFull", "Job", "InferenceQueue"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `limit` waiting requests already; retry after `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {waiting} requests are waiting; retry in {retry_after} s")
        self.waiting = waiting
        self.retry_after = retry_after


class Job:
    """A queued call `fn(cancelled)`; its outcome arrives in `future`.

    `fn` receives a callable that turns True once the job is cancelled (client gone or timed
    out), which the engine polls between slice batches.
    """

    def __init__(self, fn: Callable[[Callable[[], bool]], Any]) -> None:
        self.fn = fn
        self.future: Future = Future()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop; a job still waiting never starts."""
        self._cancel.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class InferenceQueue:
    """Runs jobs one at a time on a worker thread; at most `limit` wait behind the running one.

    Args:
        limit: how many jobs may wait; `submit` raises QueueFull beyond it.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._mean_seconds = 5.0
        self._thread = threading.Thread(target=self._work, name="tevia-inference", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Jobs accepted and not started yet."""
        with self._cond:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a job runs now."""
        with self._cond:
            return self._running is not None

    def retry_after(self) -> int:
        """Seconds after which a refused client may try again (the expected queue drain time)."""
        with self._cond:
            ahead = len(self._waiting) + (self._running is not None)
        return int(min(600, max(1, math.ceil(self._mean_seconds * max(ahead, 1)))))

    def submit(self, fn: Callable[[Callable[[], bool]], Any]) -> Job:
        """Queue `fn(cancelled)` to run on the worker thread.

        Raises:
            QueueFull: `limit` jobs wait already.
            RuntimeError: the queue was stopped.
        """
        job = Job(fn)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the inference queue is stopped")
            if len(self._waiting) >= self.limit:
                waiting = len(self._waiting)
            else:
                self._waiting.append(job)
                self._cond.notify()
                return job
        raise QueueFull(waiting, self.retry_after())

    def cancel(self, job: Job) -> None:
        """Cancel `job`: a waiting job leaves the queue at once, a running one is asked to stop."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
        job.cancel()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting jobs, ask the running one to stop and wait for the thread."""
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.cancel()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                self._running = job
            try:
                if job.future.set_running_or_notify_cancel():
                    self._run(job)
            finally:
                with self._cond:
                    self._running = None
                job = None  # hold nothing of a finished request (its answer) while waiting for the next

    def _run(self, job: Job) -> None:
        start = time.perf_counter()
        try:
            result = job.fn(lambda: job.cancelled)
        except BaseException as error:  # the request's handler decides how to answer it
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        elapsed = time.perf_counter() - start
        self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * elapsed
