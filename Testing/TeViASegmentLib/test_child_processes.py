"""Child processes as on Windows: non-UTF-8 stderr, forced UTF-8 I/O, no console windows."""

from __future__ import annotations

import sys

from TeViASegmentLib import worker_client
from TeViASegmentLib.worker_client import WorkerClient

# A worker stand-in that logs a cp1252 path (what a Windows child writes without UTF-8 mode)
# 3000 times, 150 kB in all: more than a pipe holds, so it blocks unless the client keeps
# reading stderr; then it answers each request with its encoding settings.
CP1252_CHILD = r"""
import json, os, sys
line = "C:\\Users\\J\u00fcrgen\\AppData\\TeViA\\model loaded from this folder (a long log line)\n"
for _ in range(3000):
    sys.stderr.buffer.write(line.encode("cp1252"))
sys.stderr.buffer.flush()
for request in sys.stdin:
    request = json.loads(request)
    answer = {"id": request["id"], "event": "result",
              "utf8": os.environ.get("PYTHONUTF8"), "io": os.environ.get("PYTHONIOENCODING")}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
"""


def test_non_utf8_stderr_neither_kills_the_reader_nor_blocks_the_worker():
    client = WorkerClient(python=sys.executable, args=["-c", CP1252_CHILD])
    try:
        for n in range(2):
            request_id = client.send({"type": "ping"})
            event = client.next_event(timeout_s=30)
            assert event is not None, f"no answer to request {n}: the worker is blocked on a full stderr pipe"
            assert event["id"] == request_id and event["event"] == "result"
        assert event["utf8"] == "1" and event["io"] == "utf-8", "the child runs with UTF-8 I/O forced"
        assert "J\ufffdrgen" in client.stderr_tail, "undecodable bytes are replaced, the line is kept"
        assert client.running
    finally:
        client.kill()


def test_windows_children_start_without_a_console_window_in_their_own_group():
    options = worker_client.child_process_options("win32")
    assert set(options) == {"creationflags"}
    assert options["creationflags"] == worker_client.CREATE_NO_WINDOW | worker_client.CREATE_NEW_PROCESS_GROUP
    assert worker_client.CREATE_NO_WINDOW == 0x08000000 and worker_client.CREATE_NEW_PROCESS_GROUP == 0x200
    assert worker_client.child_process_options("win32", new_group=False) == {
        "creationflags": worker_client.CREATE_NO_WINDOW}


def test_posix_children_lead_a_new_session():
    for platform in ("linux", "darwin"):
        assert worker_client.child_process_options(platform) == {"start_new_session": True}
        assert worker_client.child_process_options(platform, new_group=False) == {}


def test_child_environment_forces_utf8_and_keeps_the_rest(monkeypatch):
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    monkeypatch.setenv("TEVIA_PROBE", "kept")
    env = worker_client.child_environment({"EXTRA": "1"})
    assert (env["PYTHONUTF8"], env["PYTHONIOENCODING"], env["TEVIA_PROBE"], env["EXTRA"]) == ("1", "utf-8", "kept", "1")
