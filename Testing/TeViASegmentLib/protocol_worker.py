"""A small real worker process speaking the JSON-lines protocol of docs/ENGINE_API.md.

It exists to drive the worker client through the failures a real model worker rarely shows on
demand. Behaviour per `segment` request, chosen by the first prompt:
- "crash": the process exits with code 3 at once;
- "hang": starts a child process (`sleep`), then ignores everything, cancel included;
- "fail": answers an error event;
- anything else: progress events, a warning, then a labelmap where voxels above the volume's
  mean get label 1 (and the next prompts get empty labels), written to the request's .npy output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def segment(request: dict) -> None:
    rid, prompts = request["id"], request["prompts"]
    if prompts[0] == "crash":
        sys.stderr.write("protocol_worker: simulated crash\n")
        sys.stderr.flush()
        os._exit(3)
    if prompts[0] == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        emit(id=rid, event="progress", stage="child", done=child.pid, total=0)
        while True:
            time.sleep(1)
    if prompts[0] == "fail":
        emit(id=rid, event="error", code="bad_input", message="the volume could not be read: demo failure")
        return
    voxels = np.load(request["input"]["npy"])
    geometry = json.loads(open(request["input"]["geometry"], encoding="utf-8").read())
    assert list(voxels.shape) == geometry["shape_kji"]
    for k in range(voxels.shape[0]):
        emit(id=rid, event="progress", stage="slices", done=k + 1, total=voxels.shape[0])
    emit(id=rid, event="warning", message="out-of-domain words in prompt: demo")
    labelmap = (voxels > voxels.mean()).astype(np.uint8)
    np.save(request["output"], labelmap)
    emit(id=rid, event="result", output=request["output"],
         labels={str(i + 1): p for i, p in enumerate(prompts)}, voxels={prompts[0]: int(labelmap.sum())},
         timings={}, warnings=[])


def main() -> None:
    emit(id=None, event="ready", device="cpu", pid=os.getpid())
    for line in sys.stdin:
        request = json.loads(line)
        kind = request.get("type")
        if kind == "load":
            emit(id=request["id"], event="result", model=request["model"], device="cpu")
        elif kind == "segment":
            segment(request)
        elif kind == "cancel":
            emit(id=request["target"], event="cancelled")
        elif kind == "shutdown":
            return


if __name__ == "__main__":
    main()
