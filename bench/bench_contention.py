"""A warm worker next to another busy process: second-prompt latency with GNU OpenMP's default
spinning and with the worker's GOMP_SPINCOUNT; writes bench/contention.json.

On the 512x512x300 CT of bench/bench_volume.py, through real worker processes (`python -m
tevia.serving.worker`, 2 threads): a first prompt fills the feature cache on an idle machine, then
`--prompts` second prompts are timed (request sent -> result read), first with the machine
idle, then next to a `load` process that keeps 2 threads busy with matrix products (what a
training run, a second model or a busy Slicer does to the worker). Each case in its own worker:
`GOMP_SPINCOUNT=300000` (libgomp's default: the worker before it set its own) and the worker's
own default (tevia/serving/worker.py). Minimum and median of the prompts per case. Run it on an
otherwise idle machine: the load must be the only other job.

    python bench/bench_contention.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_volume import SOURCE, Worker, make_volume  # noqa: E402

LOAD = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")
PROMPTS = ["spleen", "left kidney", "right kidney", "stomach", "pancreas", "aorta"]


def _case(volume: Path, spincount: str | None, prompts: int, scratch: Path) -> dict:
    """A fresh worker (GOMP_SPINCOUNT=spincount, or the worker's own default): idle, then loaded."""
    if spincount is None:
        os.environ.pop("GOMP_SPINCOUNT", None)
    else:
        os.environ["GOMP_SPINCOUNT"] = spincount
    worker = Worker(2)
    try:
        worker.request({"id": "load", "type": "load", "model": "default", "device": "cpu"})
        segment = {"type": "segment", "input": str(volume), "options": {"window": "abdomen"}}
        worker.request({**segment, "id": "first", "prompts": ["liver"], "output": str(scratch / "first.npy")})
        result: dict = {}
        for condition in ("idle", "loaded"):
            load = subprocess.Popen([sys.executable, "-c", LOAD]) if condition == "loaded" else None
            try:
                time.sleep(1.0 if load else 0.0)
                seconds = [worker.request({**segment, "id": f"{condition}{i}", "prompts": [PROMPTS[i % len(PROMPTS)]],
                                           "output": str(scratch / f"{condition}{i}.npy")})[1]
                           for i in range(prompts)]
            finally:
                if load:
                    load.kill()
                    load.wait()
            result[condition] = {"min": round(min(seconds), 3), "median": round(statistics.median(seconds), 3),
                                 "seconds": [round(s, 3) for s in seconds]}
        return result
    finally:
        worker.close()
        os.environ.pop("GOMP_SPINCOUNT", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3, help="second prompts timed per condition")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "contention.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        volume = make_volume(SOURCE, (512, 512, 300), scratch / "ct.nrrd")
        cases = {"GOMP_SPINCOUNT=300000 (libgomp default)": _case(volume, "300000", args.prompts, scratch),
                 "the worker's default (tevia/serving/worker.py)": _case(volume, None, args.prompts, scratch)}
    result = {"benchmark": __doc__.splitlines()[0] + " " + __doc__.splitlines()[1], "threads": 2, "load_threads": 2,
              "statistic": "second-prompt seconds, request sent -> result read", "cases": cases,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(cases, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
