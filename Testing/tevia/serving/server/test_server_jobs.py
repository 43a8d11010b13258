"""InferenceQueue: one job at a time, bounded waiting, cancel, errors, stop."""

from __future__ import annotations

import threading

import pytest

from server_helpers import wait_until

from tevia.serving.server.jobs import InferenceQueue, QueueFull


@pytest.fixture
def queue():
    queue = InferenceQueue(limit=2)
    yield queue
    queue.stop()


def _blocker(started: threading.Event, release: threading.Event):
    def run(cancelled):
        started.set()
        release.wait(10)
        return "blocked"
    return run


def test_jobs_run_one_at_a_time_in_order_and_the_queue_is_bounded(queue):
    started, release = threading.Event(), threading.Event()
    order: list[int] = []
    running = queue.submit(_blocker(started, release))
    assert started.wait(10) and queue.busy
    waiting = [queue.submit(lambda cancelled, i=i: order.append(i) or i) for i in range(2)]
    with pytest.raises(QueueFull) as refused:
        queue.submit(lambda cancelled: None)
    assert refused.value.waiting == 2 and refused.value.retry_after >= 1
    release.set()
    assert running.future.result(10) == "blocked"
    assert [job.future.result(10) for job in waiting] == [0, 1] and order == [0, 1]
    assert wait_until(lambda: not queue.busy and queue.waiting == 0)


def test_a_cancelled_waiting_job_never_runs_and_a_running_one_sees_the_flag(queue):
    started = threading.Event()
    seen: list[bool] = []

    def watch(cancelled):
        started.set()
        assert wait_until(cancelled, 10)
        seen.append(cancelled())

    running = queue.submit(watch)
    assert started.wait(10)
    ran: list[int] = []
    waiting = queue.submit(lambda cancelled: ran.append(1))
    queue.cancel(waiting)
    assert queue.waiting == 0 and waiting.future.cancelled()
    queue.cancel(running)
    assert wait_until(lambda: seen == [True])
    assert ran == []


def test_an_exception_reaches_the_caller_and_the_queue_keeps_working(queue):
    def fail(cancelled):
        raise ValueError("bad volume")

    with pytest.raises(ValueError, match="bad volume"):
        queue.submit(fail).future.result(10)
    assert queue.submit(lambda cancelled: 42).future.result(10) == 42


def test_stop_cancels_waiting_jobs_and_refuses_new_ones():
    queue = InferenceQueue(limit=3)
    started = threading.Event()

    def until_cancelled(cancelled):
        started.set()
        return wait_until(cancelled, 10)

    running = queue.submit(until_cancelled)
    assert started.wait(10)
    waiting = queue.submit(lambda cancelled: None)
    queue.stop()
    assert running.future.result(10) is True
    assert waiting.future.cancelled()
    with pytest.raises(RuntimeError, match="stopped"):
        queue.submit(lambda cancelled: None)
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        InferenceQueue(0)
