"""Benchmark of the volume pipeline through the real worker process; writes bench/volume.json.

A CT-sized volume (default 512x512x300, the TotalSegmentator example CT resampled with linear
interpolation) goes to ``python -m tevia.serving.worker``; the benchmark times, end to end (request sent
-> result read), a first prompt and a second prompt on the same volume (which reuses the cached
image features and the kept input), and reads the worker's peak resident memory (VmHWM) at the
end. It does so for each scenario in one run, so that their ratios compare: the input as an
uncompressed NRRD and as a gzipped NIfTI (the usual CT file), each at precision fp32 and bf16.
Every scenario runs in a fresh worker (a `load` empties the feature cache but keeps the last
input, which would spare a later scenario's first prompt its read).
The model is ``--model``, else the bundled "default" one, else the tiny random-weight test model
(the JSON says which). With a model that takes clicks (the bundled default since 0.3.0, which
carries the click injection of configs/default-qata-clicks.yaml), each scenario also times a corrective
click (issue 17): one positive click at the volume's centre, on its middle axial slice, with the
first prompt, after the two prompts: it refines that slice only (PROTOCOL.md), from the cached
image features. Targets: second prompt >= 3x faster, peak RSS <= 2.5 GB.

    python bench/bench_volume.py                      # 512x512x300, 2 threads
    python bench/bench_volume.py --size 128 128 40    # a quick check
    python bench/bench_volume.py --formats nrrd --precisions fp32 --out bench/volume_clicks.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))
SOURCE = REPO / "Testing" / "data" / "volumes" / "totalseg-ct.nii.gz"  # the TotalSegmentator example CT
log = logging.getLogger("bench_volume")


def make_volume(source: Path, size: tuple[int, int, int], out: Path) -> Path:
    """Resample ``source`` onto ``size`` voxels covering the same field of view; int16, written
    as ``out`` (.nrrd uncompressed; .nii.gz gzipped)."""
    image = sitk.ReadImage(str(source))
    spacing = [sp * n / m for sp, n, m in zip(image.GetSpacing(), image.GetSize(), size)]
    resampled = sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                              spacing, image.GetDirection(), -1024.0, sitk.sitkInt16)
    sitk.WriteImage(resampled, str(out), useCompression=out.name.endswith(".gz"))
    return out


def pick_model(folder: Path, requested: str | None) -> tuple[str, str]:
    """The requested model; else the bundled default when it exists; else a freshly built tiny model
    (into ``folder``)."""
    from tevia.model_folders import resolve_model

    if requested:
        return str(resolve_model(requested)), requested
    try:
        return str(resolve_model("default")), "default"
    except (ValueError, FileNotFoundError):
        sys.path.insert(0, str(REPO / "Testing"))
        from conftest import build_tiny_model

        return str(build_tiny_model(folder / "tiny")), "tiny random-weight test model (default model absent)"


class Worker:
    """The worker subprocess with blocking request/answer helpers."""

    def __init__(self, threads: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO / "TeViASegment"), OMP_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tevia.serving.worker", "--threads", str(threads), "--log-level", "WARNING"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = json.loads(self.process.stdout.readline())

    def request(self, request: dict) -> tuple[dict, float]:
        began = time.perf_counter()
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            event = json.loads(line)
            if event["id"] == request["id"] and event["event"] in ("result", "error", "cancelled"):
                if event["event"] != "result":
                    raise RuntimeError(f"worker answered {event}")
                return event, time.perf_counter() - began
        raise RuntimeError("the worker exited")

    def peak_rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024

    def close(self) -> None:
        self.request({"id": "bye", "type": "shutdown"})
        self.process.wait(30)


def scenario(worker: Worker, volume: Path, model: str, device: str, precision: str, scratch: Path) -> dict:
    """Load (emptying the caches), then a first and a second prompt on ``volume``."""
    loaded, load_seconds = worker.request({"id": "load", "type": "load", "model": model, "device": device,
                                           "precision": precision})
    segment = {"type": "segment", "input": str(volume), "options": {"window": "abdomen"}}
    first, first_seconds = worker.request({**segment, "id": "first", "prompts": ["liver"],
                                           "output": str(scratch / "first.npy")})
    second, second_seconds = worker.request({**segment, "id": "second", "prompts": ["spleen"],
                                             "output": str(scratch / "second.npy")})
    slices = sitk.ReadImage(str(volume)).GetSize()[2]
    speedup = first_seconds / second_seconds
    clicked = click_step(worker, volume, segment, scratch, first_seconds) if loaded["click_inputs"] else {}
    return {
        "loaded": loaded, "load_seconds": round(load_seconds, 3),
        "first_prompt_seconds": round(first_seconds, 3),
        "second_prompt_seconds": round(second_seconds, 3),
        "second_prompt_speedup": round(speedup, 2),
        "second_prompt_cache_hit": second["cache_hit"], "second_prompt_input_reused": second.get("input_reused"),
        "slices_per_second_first": round(slices / first_seconds, 2),
        "slices_per_second_second": round(slices / second_seconds, 2),
        "timings_first": first["timings"], "timings_second": second["timings"],
        "meets_speedup_target": speedup >= 3.0,
        **clicked,
    }


def click_step(worker: Worker, volume: Path, segment: dict, scratch: Path, first_seconds: float) -> dict:
    """A positive click at the volume's centre, on its middle slice, with the first prompt."""
    image = sitk.ReadImage(str(volume))
    centre = [(n - 1) / 2 for n in image.GetSize()]
    centre[2] = float(image.GetSize()[2] // 2)
    x, y, z = image.TransformContinuousIndexToPhysicalPoint(centre)  # LPS
    clicked, seconds = worker.request({**segment, "id": "click", "prompts": ["liver"],
                                       "clicks": [[{"ras": [-x, -y, z], "positive": True}]],
                                       "output": str(scratch / "click.npy")})
    return {"click_seconds": round(seconds, 3), "click_speedup": round(first_seconds / seconds, 2),
            "click_refined_slices": clicked["refined_slices"], "click_cache_hit": clicked["cache_hit"],
            "timings_click": clicked["timings"]}


def _median_run(results: list[dict], slices: int) -> dict:
    """The median first and second prompt (and click) seconds of repeated runs; every run kept under "runs"."""
    first = statistics.median(r["first_prompt_seconds"] for r in results)
    second = statistics.median(r["second_prompt_seconds"] for r in results)
    clicked = {}
    if "click_seconds" in results[0]:
        click = statistics.median(r["click_seconds"] for r in results)
        clicked = {"click_seconds": round(click, 3), "click_speedup": round(first / click, 2)}
    return {"first_prompt_seconds": round(first, 3), "second_prompt_seconds": round(second, 3), **clicked,
            "second_prompt_speedup": round(first / second, 2), "meets_speedup_target": first / second >= 3.0,
            "slices_per_second_first": round(slices / first, 2), "slices_per_second_second": round(slices / second, 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "runs": results}


def run(size: tuple[int, int, int], threads: int, device: str, model: str | None,
        formats: list[str], precisions: list[str], repeats: int, note: str = "") -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        volumes = {fmt: make_volume(SOURCE, size, scratch / f"ct.{fmt}") for fmt in formats}
        model, model_note = pick_model(scratch, model)
        time.sleep(2.5)  # the worker trusts an input's signature only once it is 2 s old
        runs: dict[str, list[dict]] = {}
        peak = 0
        for _ in range(repeats):  # round robin: slow spells of a shared machine spread over the scenarios
            for fmt in formats:
                for precision in precisions:
                    worker = Worker(threads)
                    try:
                        result = scenario(worker, volumes[fmt], model, device, precision, scratch)
                        result["peak_rss_mb"] = round(worker.peak_rss_bytes() / 1024**2, 1)
                        peak = max(peak, worker.peak_rss_bytes())
                    finally:
                        worker.close()
                    runs.setdefault(f"{fmt}/{precision}", []).append(result)
                    log.info("%s/%s: first %.2f s, second %.2f s (%.2fx), click %s s, peak %.0f MB", fmt, precision,
                             result["first_prompt_seconds"], result["second_prompt_seconds"],
                             result["second_prompt_speedup"], result.get("click_seconds", "-"), result["peak_rss_mb"])
        scenarios = {name: _median_run(results, size[2]) for name, results in runs.items()}
    loaded = next(iter(runs.values()))[0]["loaded"]
    for results in runs.values():
        for entry in results:
            entry.pop("loaded", None)
    return {
        "benchmark": "volume pipeline through the worker (request sent -> result read)",
        "volume": {"size_ijk": list(size), "source": "totalseg-example-ct/ct.nii.gz resampled (linear), int16",
                   "formats": {"nrrd": "uncompressed NRRD", "nii.gz": "gzipped NIfTI"}},
        "model": model_note, "model_name": loaded["name"], "image_size": loaded["image_size"],
        "device": loaded["device_name"], "threads": threads,
        "repeats": repeats, "statistic": "median over the repeats (each in a fresh worker)", "note": note,
        "scenarios": scenarios,
        "peak_rss_mb": round(peak / 1024**2, 1),
        "targets": {"second_prompt_speedup_min": 3.0, "peak_rss_mb_max": 2.5 * 1024},
        "meets_peak_rss_target": peak <= 2.5 * 1024**3,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], metavar=("I", "J", "K"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="model name or folder (one with click inputs adds a timed click); default: "
                                        "the bundled default, else the tiny test model")
    parser.add_argument("--formats", nargs="+", default=["nrrd", "nii.gz"], choices=["nrrd", "nii.gz"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every scenario (medians are reported)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "volume.json")
    parser.add_argument("--note", default="", help="free text kept in the JSON (e.g. the machine's load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(tuple(args.size), args.threads, args.device, args.model, args.formats, args.precisions,
                 args.repeats, args.note)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("model %s, peak RSS %.0f MB; written %s", result["model"], result["peak_rss_mb"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
