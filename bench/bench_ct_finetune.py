"""A real domain shift: the bundled chest X-ray model fine-tuned on axial CT slices.

Starting from the bundled X-ray model (`default`), `tevia train --config
configs/ct-covid-lung.yaml --init default` (the shipped recipe, its epochs and options) fine-tunes
on the first 50, the first 200 and all 531 train slices of ../shared/data/covid-ct-slices (the
first N: the corrections of an annotator who went through the first scans); a last run trains the
same recipe from the ImageNet initialisation alone (no --init), to show what starting from the
X-ray model is worth. Every model, and `default` before any fine-tuning, is measured with `tevia
evaluate` on CT val (294 slices of scans not in train, at the slices' own 256x256) and on QaTa
val (X-rays at 224x224, the default model card's setting: forgetting), and its image-domain
check (tevia.inference.domain) on both: the share of slices it flags as unlike its training images.

Each step is its own process (`python -m tevia ...`, OMP_NUM_THREADS and train.threads from
--threads); its CPU time (user + system, from the children's rusage) and wall time are
recorded. The results go to bench/ct_finetune.json after every step, and a step already there
is skipped on a second run (delete the file to start over).

Usage (from the repository root; the machine is shared, so nice it):
    nohup nice -n 15 python bench/bench_ct_finetune.py --qata-limit 429 > runs/ct-bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_ct_finetune")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TeViASegment"))
CT_DATA = "../shared/data/covid-ct-slices"
QATA_DATA = "../shared/data/qata-cov19"
CONFIG = "configs/ct-covid-lung.yaml"
CT_TRAIN_SLICES = 531
# name: (train slices, init), in the order they run (the shipped recipe first); every run
# trains the config's recipe as it is (epochs included).
RUNS = {
    "finetune_all": (CT_TRAIN_SLICES, "default"),
    "finetune_50": (50, "default"),
    "finetune_200": (200, "default"),
    "imagenet_all": (CT_TRAIN_SLICES, None),
}


def _run(command: list[str], threads: int) -> dict[str, float]:
    """Runs one child process; its CPU minutes (user + system) and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "TeViASegment")}
    log.info("running %s", " ".join(command))
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_minutes": round(cpu / 60, 2), "wall_minutes": round((time.perf_counter() - started) / 60, 2)}


def _evaluate(model: str, data: str, size: int, out: Path, threads: int, limit: int | None = None) -> dict[str, float]:
    _run([sys.executable, "-m", "tevia", "evaluate", "--model", model, "--data", data, "--split", "val",
          "--out", str(out), "--no-hd95", "--eval-size", str(size), str(size), *(["--limit", str(limit)] if limit else [])], threads)
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: round(metrics[key], 4) for key in ("dice_global", "dice_mean")} | {"n": metrics["n"]}


def first_rows_dice(per_case_csv: Path, rows: int) -> dict[str, float]:
    """Pooled and mean Dice of the first `rows` cases of a per_case.csv (intersection = Dice x
    (gt + pred) / 2, exact), to compare a full evaluation with a limited one."""
    with open(per_case_csv, newline="") as handle:
        cases = list(csv.DictReader(handle))[:rows]
    inter = sum(float(c["dice"]) * (float(c["gt_pixels"]) + float(c["pred_pixels"])) / 2 for c in cases)
    total = sum(float(c["gt_pixels"]) + float(c["pred_pixels"]) for c in cases)
    return {"dice_global": round(2 * inter / total, 4), "dice_mean": round(sum(float(c["dice"]) for c in cases) / len(cases), 4),
            "n": len(cases)}


def lung_sides(root: Path) -> dict[str, float]:
    """Where the bigger lung lies in the slices' images: the patient's left lung is the smaller
    one (the heart), so more lung in the image's left half means the patient's right is shown on
    the image's left (the standard radiological display)."""
    import numpy as np
    from PIL import Image

    left = right = bigger_left = count = 0
    for path in sorted(root.glob("*/Lungs/*.png")):
        lungs = np.asarray(Image.open(path)) > 0
        half = lungs.shape[1] // 2
        slice_left, slice_right = int(lungs[:, :half].sum()), int(lungs[:, half:].sum())
        left, right, count = left + slice_left, right + slice_right, count + 1
        bigger_left += slice_left > slice_right
    return {"slices": count, "lung_pixels_image_right_over_left": round(right / left, 3),
            "share_of_slices_with_more_lung_in_the_image_left_half": round(bigger_left / count, 3)}


def domain_flags(model: str, qata_limit: int | None, threads: int) -> dict[str, dict[str, float]]:
    """Share of the CT val slices and of the QaTa val X-rays (the first `qata_limit`) that the
    model's image-domain check flags as unlike its training images."""
    import numpy as np
    import torch

    from tevia.training.data.dataset import CSVSegmentationDataset
    from tevia.commands.domain import image_features
    from tevia.inference.segmenter import Segmenter

    torch.set_num_threads(threads)
    segmenter = Segmenter.load(model, device="cpu")
    flagged = {}
    for key, data, limit in (("ct_val", CT_DATA, None), ("qata_val", QATA_DATA, qata_limit)):
        paths = CSVSegmentationDataset(ROOT / data, "val", cache=False).image_paths[:limit]
        scores = np.concatenate([segmenter.domain.scores_of(image_features(segmenter, path)) for path in paths])
        flagged[key] = {"flagged": round(float(np.mean(scores > segmenter.domain.threshold)), 4), "n": len(paths)}
    return flagged


def _measure(model: str, out: Path, qata_limit: int | None, threads: int) -> dict[str, dict]:
    return {"ct_val": _evaluate(model, CT_DATA, 256, out / "ct-val", threads),
            "qata_val": _evaluate(model, QATA_DATA, 224, out / "qata-val", threads, qata_limit),
            "domain_check": domain_flags(model, qata_limit, threads)}


def _train(name: str, slices: int, init: str | None, out: Path, threads: int) -> tuple[Path, dict[str, float]]:
    command = [sys.executable, "-m", "tevia", "train", "--config", CONFIG,
               f"data.train_fraction={(slices + 0.5) / CT_TRAIN_SLICES}", f"train.threads={threads}",
               f"train.out_dir={out}", f"train.model_name=ct-{name}", "train.install=false"]
    if init:
        command += ["--init", init]
    return out / "model", _run(command, threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/ct_finetune.json")
    parser.add_argument("--runs-dir", default="runs/ct-bench")
    parser.add_argument("--qata-limit", type=int, default=None,
                        help="measure QaTa val on its first N images only (cases already measured on all of "
                             "val also get their first-N figures, for comparison)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="the runs to do (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every step (default 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result_path, runs = ROOT / args.out, ROOT / args.runs_dir
    results = json.loads(result_path.read_text()) if result_path.is_file() else {
        "what": __doc__.split("\n\n")[1].replace("\n", " "), "config": CONFIG, "cases": {}}

    def save() -> None:
        result_path.write_text(json.dumps(results, indent=2) + "\n")

    if "lung_sides" not in results:
        results["lung_sides"] = lung_sides(ROOT / CT_DATA)
        save()
    if "before" not in results["cases"]:
        results["cases"]["before"] = {"model": "default", **_measure("default", runs / "before", args.qata_limit, args.threads)}
        save()
    for name, (slices, init) in RUNS.items():
        if name in results["cases"] or name not in args.runs:
            continue
        model, cost = _train(name, slices, init, runs / name, args.threads)
        trained = json.loads((model / "model.json").read_text())["metrics"]
        results["cases"][name] = {"train_slices": slices, "init": init or "ImageNet", "epochs_run": trained.get("epochs"),
                                  "kept": trained.get("checkpoint_monitor"), "train": cost | {"threads": args.threads},
                                  **_measure(str(model), runs / name / "eval", args.qata_limit, args.threads)}
        save()
    if args.qata_limit:
        for name, case in results["cases"].items():
            per_case = runs / name / ("" if name == "before" else "eval") / "qata-val" / "per_case.csv"
            if case["qata_val"]["n"] > args.qata_limit and per_case.is_file():
                case[f"qata_val_first_{args.qata_limit}"] = first_rows_dice(per_case, args.qata_limit)
        save()
    log.info("wrote %s", result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
