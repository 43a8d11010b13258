"""What the worker's `crop` saves on the Slicer side; writes bench/slicer_import.json.

The Slicer side of a segment request: read the worker's .npy labelmap and import it into a new
segmentation (`scene.import_labelmap`), on a real slicer-core scene holding the 512x512x300 CT
of bench/bench_volume.py. Two labelmaps on that grid: `large`, a segment over most of the volume
(a box of 280x440x440 voxels), and `small`, a lesion-sized one (20x60x80 voxels); each read and
imported whole (what every request did before `crop`) and as the block that holds its labels
with its origin (what the worker writes with `crop`, tevia/PROTOCOL.md). Minimum and median of
`--repeats` alternating runs: the minimum is the figure least disturbed by other work on the
machine.

    python bench/bench_slicer_import.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "TeViASegment", REPO / "Testing", REPO / "Testing" / "slicer_module", REPO / "bench"):
    sys.path.insert(0, str(folder))

import slicer  # noqa: E402
from bench_volume import SOURCE, make_volume  # noqa: E402
from slicer_fixtures import load_volume, scene_with_module_logics  # noqa: E402

from TeViASegmentLib import scene  # noqa: E402
from tevia.volume.bounds import nonzero_bounds  # noqa: E402

BOXES = {"large": (slice(10, 290), slice(36, 476), slice(36, 476)), "small": (slice(140, 160), slice(200, 260), slice(220, 300))}


def _timed_import(path: Path, volume, origin: tuple[int, int, int] | None) -> float:
    began = time.perf_counter()
    node, _ = scene.import_labelmap(np.load(path), {1: "segment"}, volume, origin=origin)
    seconds = time.perf_counter() - began
    slicer.mrmlScene.RemoveNode(node)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "slicer_import.json")
    args = parser.parse_args()
    result: dict = {"benchmark": __doc__.splitlines()[0], "repeats": args.repeats, "cases": {}}
    with tempfile.TemporaryDirectory() as scratch, scene_with_module_logics():
        scratch = Path(scratch)
        volume = load_volume(make_volume(SOURCE, (512, 512, 300), scratch / "ct.nrrd"), "ct")
        for name, box in BOXES.items():
            labels = np.zeros((300, 512, 512), np.uint8)
            labels[box] = 1
            bounds = nonzero_bounds(labels)
            np.save(scratch / "whole.npy", labels)
            np.save(scratch / "block.npy", labels[tuple(slice(a, b) for a, b in bounds)])
            seconds: dict[str, list[float]] = {"whole": [], "crop": []}
            for _ in range(args.repeats):
                seconds["whole"].append(_timed_import(scratch / "whole.npy", volume, None))
                seconds["crop"].append(_timed_import(scratch / "block.npy", volume, tuple(a for a, _ in bounds)))
            result["cases"][name] = {
                "block_voxels": int(np.prod([b - a for a, b in bounds])), "volume_voxels": labels.size,
                **{f"{kind}_seconds": {"min": round(min(v), 4), "median": round(statistics.median(v), 4)}
                   for kind, v in seconds.items()}}
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor()}
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cases"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
