"""Network calls off the GUI thread: run a function on a daemon thread, poll it from a timer.

The function gets `report(*args)` (progress, delivered to `on_progress` on the polling thread)
and `cancelled()` (True once `cancel()` was called). When it ends, `on_done(result, error)` is
called once on the polling thread (the GUI thread in Slicer), never on the worker thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundCall"]


class BackgroundCall:
    """One function running on a background thread, polled by the caller.

    Args:
        function: called as function(report, cancelled) on a daemon thread.
        on_done: called with (result, None) or (None, exception) by the `poll` that sees the end.
        on_progress: called with the arguments of each `report(...)`, by `poll`.
    """

    def __init__(self, function: Callable[[Callable[..., None], Callable[[], bool]], Any],
                 on_done: Callable[[Any, BaseException | None], None] | None = None,
                 on_progress: Callable[..., None] | None = None) -> None:
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._on_done, self._on_progress = on_done, on_progress
        self.running = True
        self.result: Any = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(function,), daemon=True).start()

    def _run(self, function) -> None:
        try:
            self._events.put(("done", function(lambda *args: self._events.put(("progress", args)),
                                               self._cancelled.is_set)))
        except BaseException as error:  # noqa: BLE001 (handed to on_done on the polling thread)
            self._events.put(("error", error))

    def cancel(self) -> None:
        """Ask the function to stop (it sees `cancelled()` return True)."""
        self._cancelled.set()

    def poll(self, timeout_s: float = 0.0) -> bool:
        """Deliver progress and the end; True while the call is still running."""
        while self.running:
            try:
                kind, value = self._events.get(timeout=timeout_s) if timeout_s > 0 else self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "progress":
                if self._on_progress:
                    self._on_progress(*value)
                continue
            self.running = False
            self.result, self.error = (value, None) if kind == "done" else (None, value)
            if self._on_done:
                self._on_done(self.result, self.error)
        return self.running

    def wait(self, timeout_s: float) -> Any:
        """Poll until the call ends; its result, or raise its error (TimeoutError after timeout_s)."""
        import time

        deadline = time.monotonic() + timeout_s
        while self.poll(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the background call did not end within {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.result
