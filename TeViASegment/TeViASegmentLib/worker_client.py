"""Client for the background worker process (`python -m tevia.serving.worker`, JSON lines).

The worker runs in its own process (PythonSlicer inside Slicer, any Python elsewhere) and stays
warm between requests. Requests go to its stdin as one JSON object per line; a reader thread
turns each line of its stdout into an event dict on a queue that the caller drains: from a
QTimer in the GUI (`poll_events`), or with a blocking `next_event` in scripts and tests.
When the process ends, an `{"event": "exit", ...}` event closes its queue; the next request
starts a fresh process. `kill` ends the whole process tree (the worker and its children).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

__all__ = ["WorkerClient", "default_python", "kill_process_tree", "child_process_options", "child_environment",
           "EXIT_EVENT"]

logger = logging.getLogger(__name__)

EXIT_EVENT = "exit"
STDERR_TAIL_LINES = 40
# Windows process creation flags (subprocess defines them only on Windows)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def child_process_options(platform: str = sys.platform, new_group: bool = True) -> dict:
    """Popen keyword arguments for a background child (the worker, pip, taskkill).

    Windows: no console window (CREATE_NO_WINDOW, as Slicer's own process helpers do) and,
    with `new_group`, a process group of its own. Elsewhere, with `new_group`, a new session
    whose process group `kill_process_tree` can end.

    Args:
        platform: `sys.platform` of the machine the child runs on ("win32", "linux", "darwin").
        new_group: whether the child leads its own process group.
    """
    if platform == "win32":
        return {"creationflags": CREATE_NO_WINDOW | (CREATE_NEW_PROCESS_GROUP if new_group else 0)}
    return {"start_new_session": True} if new_group else {}


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus `extra`, with UTF-8 I/O forced for a Python child.

    Without it a child on Windows writes its output in the ANSI code page (cp1252), and a
    user name with an umlaut in a logged path is then not UTF-8.
    """
    env = dict(os.environ)
    env.update(extra or {})
    env.update(PYTHONUTF8="1", PYTHONIOENCODING="utf-8")
    return env


def default_python() -> str:
    """The interpreter for the worker: PythonSlicer inside Slicer, else this interpreter.

    Inside Slicer `sys.executable` is the Slicer application itself, so it cannot run
    `-m tevia.serving.worker`; PythonSlicer is Slicer's Python with the same packages.
    """
    python_slicer = shutil.which("PythonSlicer")
    if python_slicer:
        return python_slicer
    return sys.executable


def kill_process_tree(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """End a process started by `WorkerClient` and every process it started.

    POSIX: the worker leads its own process group, which gets SIGTERM and, when some member
    is still there after `timeout_s`, SIGKILL. Windows: `taskkill /T /F` ends the tree.
    """
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False,
                           **child_process_options(new_group=False))
        process.wait(timeout_s)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout_s)


class WorkerClient:
    """A warm worker process spoken to in JSON lines.

    Args:
        python: interpreter that runs the worker; `default_python()` when None.
        args: arguments after the interpreter; the engine's worker module by default.
        module_dir: folder put on the child's PYTHONPATH (the one holding `tevia/`); defaults
            to the module folder next to this package.
        env: extra environment variables for the child.
    """

    def __init__(self, python: str | None = None, args: list[str] | None = None,
                 module_dir: str | Path | None = None, env: dict[str, str] | None = None) -> None:
        self.python = python or default_python()
        self.args = list(args) if args is not None else ["-m", "tevia.serving.worker"]
        self.module_dir = Path(module_dir) if module_dir else Path(__file__).resolve().parents[1]
        self.env = dict(env or {})
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._write_lock = threading.Lock()

    @property
    def command(self) -> list[str]:
        """The command line that starts the worker."""
        return [self.python, *self.args]

    @property
    def running(self) -> bool:
        """Whether the worker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The worker's process id, None before the first start."""
        return None if self._process is None else self._process.pid

    @property
    def stderr_tail(self) -> str:
        """The last lines the worker wrote to stderr (for error messages)."""
        return "\n".join(self._stderr_tail)

    def start(self) -> None:
        """Start the worker unless it is already running (a dead one is replaced).

        Raises:
            RuntimeError: when the interpreter cannot be started (names the command).
        """
        if self.running:
            return
        env = child_environment(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.module_dir), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        try:
            process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, env=env, **child_process_options())
        except OSError as error:
            raise RuntimeError(f"Could not start the TeViA worker ({' '.join(self.command)}): {error}. "
                               "Check that the Python interpreter exists.") from error
        self._process = process
        self._events = queue.Queue()
        self._stderr_tail.clear()
        stderr_reader = threading.Thread(target=self._read_stderr, args=(process,), daemon=True)
        stderr_reader.start()
        threading.Thread(target=self._read_stdout, args=(process, self._events, stderr_reader), daemon=True).start()
        logger.info("Started the TeViA worker (pid %d): %s", process.pid, " ".join(self.command))

    def send(self, request: dict) -> str:
        """Send one request (starting the worker when needed); returns its id.

        An `id` is added when the request has none.

        Raises:
            RuntimeError: when the worker cannot be started or its stdin is closed.
        """
        self.start()
        request = dict(request)
        request.setdefault("id", uuid.uuid4().hex[:12])
        line = json.dumps(request) + "\n"
        try:
            with self._write_lock:
                self._process.stdin.write(line)
                self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as error:
            raise RuntimeError(f"The TeViA worker stopped accepting requests: {error}. {self.stderr_tail}") from error
        return request["id"]

    def next_event(self, timeout_s: float | None = None) -> dict | None:
        """The next event, waiting up to `timeout_s` seconds (None: forever); None on timeout."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def poll_events(self) -> list[dict]:
        """All events received so far, without waiting."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def cancel(self, target: str) -> None:
        """Ask the worker to cancel a request (it answers with a `cancelled` event)."""
        if self.running:
            self.send({"type": "cancel", "target": target})

    def kill(self) -> None:
        """End the worker and every process it started."""
        if self._process is not None and self._process.poll() is None:
            logger.warning("Ending the TeViA worker process tree (pid %d)", self._process.pid)
            kill_process_tree(self._process)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit; end its process tree if it does not within `timeout_s`."""
        if not self.running:
            return
        try:
            self.send({"type": "shutdown"})
            self._process.wait(timeout_s)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()

    def _read_stdout(self, process: subprocess.Popen, events: queue.Queue, stderr_reader: threading.Thread) -> None:
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.info("worker: %s", line)
                continue
            if isinstance(event, dict) and "event" in event:
                events.put(event)
            else:
                logger.info("worker: %s", line)
        returncode = process.wait()
        stderr_reader.join(timeout=2.0)
        events.put({"id": None, "event": EXIT_EVENT, "returncode": returncode, "stderr": self.stderr_tail})

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            line = line.rstrip()
            if line:
                self._stderr_tail.append(line)
                logger.debug("worker stderr: %s", line)
