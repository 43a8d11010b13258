"""A real ``python -m tevia.serving.worker`` process for the worker tests, and a module-scoped loaded one.

A plain module, not a conftest.py (see volume_fixtures.py); test modules import what they use.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """``python -m tevia.serving.worker`` with a reader thread collecting its stdout events."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(REPO / "TeViASegment"), OMP_NUM_THREADS="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process = subprocess.Popen([sys.executable, "-m", "tevia.serving.worker", "--threads", "1"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, encoding="utf-8", env=env)
        self.events: queue.Queue = queue.Queue()
        self.non_protocol: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        self.ready = self.next_event(timeout=120)

    def _read(self):
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.non_protocol.append(line)
        self.events.put(None)

    def next_event(self, timeout=60):
        event = self.events.get(timeout=timeout)
        assert event is not None, "the worker exited"
        return event

    def send(self, request):
        self.process.stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.process.stdin.flush()

    def until_done(self, request_id, timeout=120):
        """Events of one request up to its final one (result, error or cancelled)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(timeout=max(0.1, deadline - time.monotonic()))
            if event["id"] != request_id:
                continue
            seen.append(event)
            if event["event"] in ("result", "error", "cancelled"):
                return seen

    def request(self, request, timeout=120):
        self.send(request)
        return self.until_done(request["id"], timeout)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    process = WorkerProcess()
    loaded = process.request({"id": "load", "type": "load", "model": str(tiny_model_dir), "device": "cpu"})
    assert loaded[-1]["event"] == "result", loaded
    yield process
    process.process.stdin.close()  # end of input (e.g. Slicer died): the worker exits cleanly
    assert process.process.wait(20) == 0
    assert process.non_protocol == []
    process.close()
