"""The worker client and local jobs against a real child process (protocol_worker.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from TeViASegmentLib import jobs
from TeViASegmentLib.worker_client import WorkerClient, default_python

HERE = Path(__file__).resolve().parent


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def client():
    worker = WorkerClient(python=sys.executable, args=[str(HERE / "protocol_worker.py")])
    yield worker
    worker.kill()


def _segment_request(tmp_path: Path, prompts: list[str]) -> dict:
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    np.save(tmp_path / "v.npy", volume)
    (tmp_path / "g.json").write_text('{"shape_kji": [4, 5, 6], "ijk_to_ras": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}')
    return {"type": "segment", "input": {"npy": str(tmp_path / "v.npy"), "geometry": str(tmp_path / "g.json")},
            "prompts": prompts, "output": str(tmp_path / "out.npy"), "options": {"convention": "patient"}}


def test_default_python_is_this_interpreter_outside_slicer():
    assert default_python() == sys.executable


def test_job_streams_progress_and_warnings_then_imports_the_result(client, tmp_path):
    progress, imported = [], []
    (tmp_path / "w").mkdir()
    requests = [{"type": "load", "model": "m", "device": "cpu"}, _segment_request(tmp_path / "w", ["liver"])]
    job = jobs.LocalSegmentJob(client, requests, tmp_path / "w", lambda lab, labels, warnings: imported.append((lab, labels)) or "node",
                               on_progress=lambda *p: progress.append(p))
    assert job.wait(timeout_s=30) == "node"
    labelmap, labels = imported[0]
    assert labels == {1: "liver"} and labelmap.shape == (4, 5, 6) and labelmap.sum() == 60
    assert progress[-1] == ("slices", 4, 4)
    assert job.warnings == ["out-of-domain words in prompt: demo"]
    assert job.info["device"] == "cpu"
    assert not (tmp_path / "w").exists(), "the job's temporary folder is removed"


def test_worker_stays_warm_between_requests(client, tmp_path):
    pids = []
    for n in range(2):
        work = tmp_path / f"w{n}"
        work.mkdir()
        jobs.LocalSegmentJob(client, [_segment_request(work, ["x"])], work, lambda *a: None).wait(30)
        pids.append(client.pid)
    assert pids[0] == pids[1] and client.running


def test_worker_error_surfaces_as_a_clear_message(client, tmp_path):
    job = jobs.LocalSegmentJob(client, [_segment_request(tmp_path, ["fail"])], tmp_path, lambda *a: pytest.fail())
    with pytest.raises(jobs.JobError, match=r"the volume could not be read: demo failure \[bad_input\]"):
        job.wait(30)
    assert client.running, "an error answer keeps the worker warm"


def test_crash_gives_a_clear_error_and_the_next_request_starts_a_fresh_worker(client, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    job = jobs.LocalSegmentJob(client, [_segment_request(tmp_path / "a", ["crash"])], tmp_path / "a", lambda *a: pytest.fail())
    first_pid = client.pid
    with pytest.raises(jobs.JobError) as error:
        job.wait(30)
    assert "stopped unexpectedly (exit code 3)" in str(error.value)
    assert "simulated crash" in str(error.value), "the worker's last stderr lines are shown"
    assert not client.running
    result = jobs.LocalSegmentJob(client, [_segment_request(tmp_path / "b", ["ok"])], tmp_path / "b",
                                  lambda lab, labels, w: labels).wait(30)
    assert result == {1: "ok"} and client.pid != first_pid


def test_cancel_of_a_worker_that_ignores_it_ends_the_whole_process_tree(client, tmp_path):
    imported = []
    job = jobs.LocalSegmentJob(client, [_segment_request(tmp_path, ["hang"])], tmp_path,
                               lambda *a: imported.append(a), cancel_grace_s=1.0,
                               on_progress=lambda stage, done, total: imported.append(("child", done)))
    deadline = time.monotonic() + 20
    while not imported and time.monotonic() < deadline:
        job.poll(0.1)
    child_pid, worker_pid = imported[0][1], client.pid
    assert _alive(child_pid) and _alive(worker_pid)
    started = time.monotonic()
    job.cancel()
    with pytest.raises(jobs.JobCancelled):
        job.wait(30)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while (_alive(child_pid) or _alive(worker_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker_pid) and not _alive(child_pid), "worker and its child are gone"
    assert imported == [("child", child_pid)], "nothing was imported"


def test_cancel_confirmed_by_the_worker_keeps_it_warm(client, tmp_path):
    job = jobs.LocalSegmentJob(client, [_segment_request(tmp_path, ["x"])], tmp_path, lambda *a: pytest.fail())
    job.cancel()
    with pytest.raises(jobs.JobCancelled):
        job.wait(30)
    assert job.state == "cancelled"


def test_a_missing_interpreter_gives_a_clear_error(tmp_path):
    worker = WorkerClient(python=str(tmp_path / "no-python"))
    with pytest.raises(RuntimeError, match="Could not start the TeViA worker"):
        worker.send({"type": "load"})
