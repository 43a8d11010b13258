"""Segmentation jobs: one request to the local worker or to a remote server, polled by the caller.

A job never touches the scene until its result has fully arrived: then, inside `poll` (on the
caller's thread, the GUI thread in Slicer), it hands the labelmap to its `importer`. A job
cancelled before that point leaves the scene exactly as it was.

States: "running" -> "done" | "failed" | "cancelled". `poll()` processes what has arrived and
returns whether the job is still running; `wait()` blocks until it ends and returns the
importer's result or raises `JobError` / `JobCancelled`.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .worker_client import EXIT_EVENT, WorkerClient

__all__ = ["JobError", "JobCancelled", "SegmentJob", "LocalSegmentJob", "RemoteSegmentJob",
           "Importer", "ProgressCallback", "DoneCallback"]

logger = logging.getLogger(__name__)

# importer(labelmap_kji, labels {value: prompt}, warnings) -> result (the segmentation node)
Importer = Callable[[np.ndarray, dict[int, str], list[str]], object]
ProgressCallback = Callable[[str, int, int], None]
DoneCallback = Callable[["SegmentJob"], None]

CANCEL_GRACE_S = 5.0


class JobError(RuntimeError):
    """A segmentation job failed; the message says why and what to do."""


class JobCancelled(RuntimeError):
    """A segmentation job was cancelled before its result was imported."""


class SegmentJob:
    """Common state and callbacks of a segmentation job.

    Args:
        importer: called once with the result, on the thread that calls `poll`.
        on_progress: called with (stage, done, total).
        on_warning: called with each warning message (out-of-domain prompt, ...).
        on_done: called once when the job ends, whatever the outcome.

    Attributes:
        info: what the worker said about itself (its `ready` event, the `load` result).
        answer: the fields of the local worker's `segment` result (labels, voxels, `input_reused`,
            `cache_hit`, `timings`: PROTOCOL.md), or of the server's answer (docs/SERVER.md),
            once it arrived; with clicks both have `refined_slices` and `refined_axis`.
    """

    def __init__(self, importer: Importer, on_progress: ProgressCallback | None = None,
                 on_warning: Callable[[str], None] | None = None, on_done: DoneCallback | None = None) -> None:
        self.state = "running"
        self.error: str | None = None
        self.result: object = None
        self.warnings: list[str] = []
        self.info: dict = {}
        self.answer: dict = {}
        self._importer = importer
        self._on_progress = on_progress
        self._on_warning = on_warning
        self._on_done = on_done

    @property
    def running(self) -> bool:
        return self.state == "running"

    def poll(self, timeout_s: float = 0.0) -> bool:
        """Process what has arrived (waiting up to `timeout_s` for the first item); True while running."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the job; the scene stays as it was."""
        raise NotImplementedError

    def wait(self, timeout_s: float | None = None) -> object:
        """Block until the job ends; return the importer's result.

        Raises:
            JobError: the job failed (message from the worker or server).
            JobCancelled: the job was cancelled.
            TimeoutError: still running after `timeout_s` (the job is cancelled then).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.poll(timeout_s=0.1):
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while self.poll(timeout_s=0.1):
                    pass
                raise TimeoutError(f"Segmentation did not finish within {timeout_s} s and was cancelled")
        if self.state == "failed":
            raise JobError(self.error)
        if self.state == "cancelled":
            raise JobCancelled("Segmentation was cancelled; the scene is unchanged")
        return self.result

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning("%s", message)
        if self._on_warning:
            self._on_warning(message)

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self._on_progress:
            self._on_progress(stage, done, total)

    def _import(self, labelmap: np.ndarray, labels: dict[int, str], warnings: list[str],
                origin: tuple[int, int, int] | None = None) -> None:
        """Hand the result to the importer; a cropped result (a request with `crop`) also
        passes `origin=` (K, J, I), where the block starts in the volume's grid."""
        try:
            self.result = self._importer(labelmap, labels, warnings, **({} if origin is None else {"origin": origin}))
        except Exception as error:
            logger.exception("Importing the segmentation failed")
            self._finish("failed", f"The result could not be added to the scene: {error}")
            return
        self._finish("done")

    def _finish(self, state: str, error: str | None = None) -> None:
        if not self.running:
            return
        self.state, self.error = state, error
        self._cleanup()
        if self._on_done:
            self._on_done(self)

    def _cleanup(self) -> None:
        """Release what the job holds (temporary files)."""


class LocalSegmentJob(SegmentJob):
    """A segment request to the warm local worker (with a load request first when needed).

    Args:
        client: the worker client (started here when it is not running).
        requests: the requests to send in order; the last one is the `segment` request whose
            `output` is a .npy path the worker writes a (K, J, I) labelmap to.
        work_dir: temporary folder of this job, removed when it ends.
        cancel_grace_s: after a cancel request, how long to wait for the worker to confirm
            before its whole process tree is ended.
    """

    def __init__(self, client: WorkerClient, requests: list[dict], work_dir: str | Path,
                 importer: Importer, cancel_grace_s: float = CANCEL_GRACE_S, **callbacks) -> None:
        super().__init__(importer, **callbacks)
        self.client = client
        self.work_dir = Path(work_dir)
        self.cancel_grace_s = cancel_grace_s
        self._cancel_deadline: float | None = None
        self._ids = [client.send(request) for request in requests]
        self.request_id = self._ids[-1]
        self._output = Path(requests[-1]["output"])

    def cancel(self) -> None:
        if not self.running or self._cancel_deadline is not None:
            return
        self._cancel_deadline = time.monotonic() + self.cancel_grace_s
        try:
            for request_id in self._ids:
                self.client.cancel(request_id)
        except RuntimeError:
            self.client.kill()

    def poll(self, timeout_s: float = 0.0) -> bool:
        if not self.running:
            return False
        event = self.client.next_event(timeout_s) if timeout_s > 0 else None
        events = ([event] if event else []) + self.client.poll_events()
        for event in events:
            self._handle(event)
            if not self.running:
                return False
        if self._cancel_deadline is not None and time.monotonic() > self._cancel_deadline:
            self.client.kill()
            self._finish("cancelled")
        return self.running

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == EXIT_EVENT:
            if self._cancel_deadline is not None:
                self._finish("cancelled")
                return
            self._finish("failed", (
                f"The TeViA worker process stopped unexpectedly (exit code {event.get('returncode')}). "
                "The next request starts a fresh worker." + _tail(event.get("stderr", ""))))
            return
        if kind == "ready":
            self.info.update({k: v for k, v in event.items() if k not in ("id", "event")})
            return
        if event.get("id") not in self._ids:
            return
        if kind == "progress":
            self._progress(str(event.get("stage", "")), int(event.get("done", 0)), int(event.get("total", 0)))
        elif kind == "warning":
            self._warn(str(event.get("message", "")))
        elif kind == "error":
            message = f"{event.get('message', 'unknown error')} [{event.get('code', 'error')}]"
            if event.get("id") != self.request_id and self.client.running:
                self.client.cancel(self.request_id)
            self._finish("cancelled" if self._cancel_deadline is not None else "failed", message)
        elif kind == "cancelled":
            self._finish("cancelled")
        elif kind == "result" and event.get("id") != self.request_id:
            self.info.update({k: v for k, v in event.items() if k not in ("id", "event")})
        elif kind == "result" and self._cancel_deadline is None:
            self._on_result(event)
        elif kind == "result":
            self._finish("cancelled")

    def _on_result(self, event: dict) -> None:
        self.answer = {key: value for key, value in event.items() if key not in ("id", "event")}
        for message in event.get("warnings", []):
            if message not in self.warnings:
                self._warn(str(message))
        try:
            labelmap = np.load(event.get("output") or self._output)
            labels = {int(value): str(prompt) for value, prompt in event["labels"].items()}
            origin = tuple(int(x) for x in event["crop_origin"]) if "crop_origin" in event else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            self._finish("failed", f"The worker's result could not be read: {error}")
            return
        self._import(labelmap, labels, self.warnings, origin)

    def _cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class RemoteSegmentJob(SegmentJob):
    """A segment request to a remote TeViA server, run on a background thread.

    Args:
        segment_call: `RemoteClient.segment_answer` bound to its arguments except `cancelled`:
            called as segment_call(cancelled) -> a `remote_client.RemoteAnswer`.
    """

    def __init__(self, segment_call: Callable, importer: Importer, **callbacks) -> None:
        super().__init__(importer, **callbacks)
        self._cancelled = threading.Event()
        self._results: queue.Queue = queue.Queue()
        self._progress("upload", 0, 1)
        threading.Thread(target=self._run, args=(segment_call,), daemon=True).start()

    def _run(self, segment_call: Callable) -> None:
        try:
            self._results.put(("result", segment_call(self._cancelled.is_set)))
        except Exception as error:
            self._results.put(("error", error))

    def cancel(self) -> None:
        if self.running:
            self._cancelled.set()
            self._finish("cancelled")

    def poll(self, timeout_s: float = 0.0) -> bool:
        if not self.running:
            return False
        try:
            kind, value = self._results.get(timeout=timeout_s) if timeout_s > 0 else self._results.get_nowait()
        except queue.Empty:
            return True
        if kind == "error":
            self._finish("failed", f"The remote server failed: {value}")
            return False
        self.answer = {"labels": {str(k): v for k, v in value.labels.items()}, **value.fields}
        for message in value.warnings:
            self._warn(str(message))
        self._progress("done", 1, 1)
        self._import(np.asarray(value.labelmap), {int(k): str(v) for k, v in value.labels.items()}, self.warnings)
        return False


def _tail(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()][-5:]
    return (" Last worker output:\n" + "\n".join(lines)) if lines else ""
