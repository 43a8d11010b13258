"""How many corrected slices adapt the CT model to a site's scans (issue 30).

The site's scans are the two Radiopaedia-style scans of covid-ct-slices val (radiopaedia-1:
ct_1247-ct_1257, 11 slices; radiopaedia-2: ct_1258-ct_1374, 117), added to a training set
with the Slicer module's "Add to training set" (bench/ct_site_export.py). Leave one scan out:
the model is fine-tuned (configs/ct-covid-lung-site.yaml, `tevia train --init`) on N corrected
slices of one scan, spread evenly over it, and measured on the other scan, which it never saw;
N = 10, 30, 60 and all 117 of radiopaedia-2 (held out: radiopaedia-1), and 10 and all 11 of
radiopaedia-1 (held out: radiopaedia-2). Beside it, every model is measured on val's scan of
the training scans' acquisition (ct_1081-ct_1246, 166 slices: what the model knew), and its
image-domain check counts the slices it flags on each. N = 0 is the starting model. A small
set is drawn `repeat` = round(REPEAT_TARGET / N) (at least once) times per epoch, so that every run sees about
as many site slices per epoch. Measurements: `tevia evaluate` at the slices' own 256 x 256
(the model's test-time up-down averaging), on the slices as the data set stores them.

With --final, the adapted model itself is built as configs/ct-covid-lung-site.yaml says (all
128 corrected slices of both scans; installed into the per-user models folder, $TEVIA_USER_MODELS)
and measured on the other acquisition and, as a check of the domain profile, on the slices it
trained on.

Each step is its own process; the results go to bench/ct_site.json after every case, and a
case already there is skipped (delete it from the file to run it again).

Usage (from the repository root; the starting model installed as ct-lung-infection-1.1.0):
    nohup nice -n 10 python bench/bench_ct_site.py --init ct-lung-infection-1.1.0 --final > runs/ct-site.log 2>&1 &
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

import numpy as np

import ct_site_export as export
from tevia.openmp import SPINCOUNT

log = logging.getLogger("bench_ct_site")

ROOT = export.REPO
CONFIG = "configs/ct-covid-lung-site.yaml"
REPEAT_TARGET = 80
EVAL_SETS = {"radiopaedia-1": export.SITE_SCANS["radiopaedia-1"], "radiopaedia-2": export.SITE_SCANS["radiopaedia-2"],
             "other": export.OTHER_ACQUISITION}
SCAN_SLICES = {"radiopaedia-1": 11, "radiopaedia-2": 117}
# case: (the scan trained on, corrected slices used, the held-out scan), in the order they run
# (all corrected slices of a scan first: the curve's end points)
CASES = {f"{scan}-{n}": (scan, n, {"radiopaedia-1": "radiopaedia-2", "radiopaedia-2": "radiopaedia-1"}[scan])
         for scan, n in (("radiopaedia-2", 117), ("radiopaedia-1", 11), ("radiopaedia-2", 10), ("radiopaedia-2", 30),
                         ("radiopaedia-2", 60), ("radiopaedia-1", 10))}


def _run(command: list[str], threads: int) -> dict[str, float]:
    """Run a child process; its CPU minutes (user + system) and wall minutes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # GOMP_SPINCOUNT: on the shared machine, threads spinning at barriers cost a 2-thread job most
    # of its time (tevia/openmp.py); the bench sets it for trainings too.
    env = {"GOMP_SPINCOUNT": SPINCOUNT, **os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT / "TeViASegment")}
    log.info("running %s", " ".join(command))
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_minutes": round(cpu / 60, 2), "wall_minutes": round((time.perf_counter() - started) / 60, 2)}


def _link(target: Path, link: Path) -> None:
    if not link.exists():
        link.symlink_to(target.resolve(), target_is_directory=True)


def eval_set(spans: list[tuple[str, str]], folder: Path) -> Path:
    """A data set folder whose val.csv lists the val slices of each span (first, last) (files linked)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(export.CT_DATA / "val.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    stems = [row["Image"].removeprefix("mask_").removesuffix(".png") for row in rows]
    with open(folder / "val.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["Image", "Description"], lineterminator="\n")
        writer.writeheader()
        for first, last in spans:
            writer.writerows(rows[stems.index(first):stems.index(last) + 1])
    _link(export.CT_DATA / "Val", folder / "Val")
    return folder


def _stems(span: tuple[str, str]) -> set[str]:
    first, last = (int(stem.removeprefix("ct_")) for stem in span)
    return {f"ct_{number}" for number in range(first, last + 1)}


def corrected_subset(dataset: Path, scan: str, count: int, folder: Path) -> list[str]:
    """A training set of `count` exported slices of one scan, evenly spread over it (files linked)."""
    with open(dataset / "train.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, [row for row in reader if row["Volume"] == scan]
    rows.sort(key=lambda row: row["Image"])  # <volume>_s<slice index>: slice order
    if not 0 < count <= len(rows):
        raise ValueError(f"count must be 1..{len(rows)} for {scan}, got {count}")
    chosen = [rows[i] for i in np.unique(np.round(np.linspace(0, len(rows) - 1, count)).astype(int))]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(chosen)
    _link(dataset / "Train", folder / "Train")
    return [row["Image"] for row in chosen]


def evaluate(model: str, groups: list[str], out: Path, threads: int) -> dict[str, dict]:
    """Pooled and mean Dice of a model on each of the `EVAL_SETS` named, from one `tevia evaluate`
    run over all of their slices."""
    data = eval_set([EVAL_SETS[name] for name in groups], out / "data")
    cost = _run([sys.executable, "-m", "tevia", "evaluate", "--model", model, "--data", str(data), "--split", "val",
                 "--out", str(out), "--no-hd95", "--eval-size", "256", "256"], threads)
    return {name: pooled_dice([out / "per_case.csv"], _stems(EVAL_SETS[name])) for name in groups} | {
        "wall_minutes": cost["wall_minutes"]}


def domain_flags(model: str, groups: list[str], data: Path, threads: int,
                 add_intensity_test: bool = False) -> dict[str, dict]:
    """How many slices of each of the `EVAL_SETS` named (whose images `data`'s val split lists) the
    model's image-domain check flags: by its features (score above the threshold), by the
    intensity test, and in all (either, as the pipeline warns; a profile without an intensity test
    flags by features only).

    add_intensity_test: also count, under "with_intensity_test", what the check flags once the
        profile has the intensity test that `tevia domain` now stores (from the covid-ct-slices
        train slices; the features part is unchanged): for a model built before it.
    """
    import torch

    from tevia.commands.domain import image_features, scaled_slices, split_intensity
    from tevia.inference.domain import intensity_ranges, intensity_statistics
    from tevia.inference.segmenter import Segmenter
    from tevia.training.data.dataset import CSVSegmentationDataset

    torch.set_num_threads(threads)
    segmenter = Segmenter.load(model, device="cpu")
    profile = segmenter.domain
    paths = CSVSegmentationDataset(data, "val", cache=False).image_paths
    scores = np.concatenate([profile.scores_of(image_features(segmenter, path)) for path in paths])
    statistics = np.concatenate([intensity_statistics(scaled_slices(path)) for path in paths])
    checks = {"as_built": profile.intensity}
    if add_intensity_test:
        checks["with_intensity_test"] = intensity_ranges(split_intensity(segmenter, export.CT_DATA, "train"))
    flags: dict[str, dict] = {"threshold": round(float(profile.threshold), 3)}
    for check, ranges in checks.items():
        profile.intensity = ranges
        by_intensity = profile.unlike_intensity(statistics)
        flags[check] = {"intensity_test": ranges is not None}
        for name in groups:
            chosen = np.array([path.stem in _stems(EVAL_SETS[name]) for path in paths])
            by_features = scores[chosen] > profile.threshold
            flags[check][name] = {"flagged": int(np.sum(by_features | by_intensity[chosen])), "n": int(chosen.sum()),
                                  "by_features": int(by_features.sum()), "by_intensity": int(by_intensity[chosen].sum()),
                                  "score_median": round(float(np.median(scores[chosen])), 3)}
    return flags


def _train(case: str, subset: Path, repeat: int, init: str, out: Path, threads: int,
           epochs: int | None = None) -> dict[str, float]:
    schedule = [f"train.max_epochs={epochs}", f"train.val_every_n_epochs={epochs}"] if epochs else []
    return _run([sys.executable, "-m", "tevia", "train", "--config", CONFIG, "--init", init,
                 f"data.extra_train=[{{root: {subset}, split: train, repeat: {repeat}}}]", f"train.threads={threads}",
                 f"train.out_dir={out}", f"train.model_name=ct-site-{case}", "train.install=false",
                 "data.val_fraction=0.1", *schedule], threads)  # val only reports: the bench measures the held-out scan


def pooled_dice(per_case_files: list[Path], names: set[str] | None = None) -> dict[str, float]:
    """Pooled Dice over the slices (those named, or all) of several `tevia evaluate` per_case.csv
    files (intersection = Dice x (gt + pred) / 2, exact) and their mean Dice."""
    rows = [row for path in per_case_files for row in csv.DictReader(open(path, newline="", encoding="utf-8"))
            if names is None or row["name"] in names]
    sizes = [float(row["gt_pixels"]) + float(row["pred_pixels"]) for row in rows]
    inter = sum(float(row["dice"]) * size / 2 for row, size in zip(rows, sizes))
    return {"dice_global": round(2 * inter / sum(sizes), 4), "dice_mean": round(float(np.mean([float(r["dice"]) for r in rows])), 4),
            "n": len(rows)}


def curve(results: dict, runs: Path) -> dict[str, dict]:
    """Leave one scan out: for each number of corrected slices, the pooled Dice over the held-out
    slices of every case with that many (both scans held out where both runs exist)."""
    by_count: dict[str, list[tuple[str, str]]] = {"0": [("before", "radiopaedia-1"), ("before", "radiopaedia-2")]}
    for case, (scan, count, held_out) in CASES.items():
        if case in results["cases"]:
            key = "all" if count == SCAN_SLICES[scan] else str(count)
            by_count.setdefault(key, []).append((case, held_out))
    out = {}
    for key, members in by_count.items():
        held = pooled_dice([runs / case / "eval" / "per_case.csv" for case in dict.fromkeys(c for c, _ in members)],
                           set().union(*(_stems(EVAL_SETS[name]) for _, name in members)))
        other = [results["cases"][case]["other"]["dice_global"] for case in dict.fromkeys(c for c, _ in members)]
        out[key] = {"cases": list(dict.fromkeys(case for case, _ in members)), "held_out_radiopaedia": held,
                    "other_acquisition_pooled_dice": other}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", default="ct-lung-infection-1.1.0", help="the starting model (name or folder)")
    parser.add_argument("--out", default="bench/ct_site.json")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ct-site"))
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="a recipe variant: this many epochs instead of the config's; "
                        "recorded as <case>-e<epochs>, outside the curve")
    parser.add_argument("--final", action="store_true",
                        help="also build the adapted model as the config says (all corrected slices of both scans, "
                             "installed into the per-user models folder) and measure it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs, result_path = ROOT / args.runs_dir, ROOT / args.out
    results = json.loads(result_path.read_text()) if result_path.is_file() else {
        "what": __doc__.split("\n\n")[1].replace("\n", " "), "config": CONFIG, "init": args.init,
        "command": "python bench/bench_ct_site.py " + " ".join(sys.argv[1:]), "cases": {}}

    command = "python bench/bench_ct_site.py " + " ".join(sys.argv[1:])
    if command not in results.setdefault("commands", []):
        results["commands"].append(command)

    def save() -> None:
        result_path.write_text(json.dumps(results, indent=2) + "\n")

    dataset = runs / "dataset"
    if not (dataset / "train.csv").is_file():
        export.export_site(dataset, args.init)
    if "dataset" not in results:
        with open(dataset / "train.csv", newline="", encoding="utf-8") as handle:
            volumes = [row["Volume"] for row in csv.DictReader(handle)]
        results["dataset"] = {"folder": str(args.runs_dir / "dataset"), "made_by": "python bench/ct_site_export.py "
                              "(TeViASegmentLogic.addToTrainingSet on a slicer-core scene)",
                              "slices_per_volume": {v: volumes.count(v) for v in dict.fromkeys(volumes)}}
        save()
    everything = list(EVAL_SETS)
    if "before" not in results["cases"]:
        measured = evaluate(args.init, everything, runs / "before" / "eval", args.threads)
        results["cases"]["before"] = {
            "model": args.init, "corrected_slices": 0, **measured,
            "domain_check": domain_flags(args.init, everything, runs / "before" / "eval" / "data", args.threads,
                                         add_intensity_test=True)}
        save()
    for name in args.cases:
        case = f"{name}-e{args.epochs}" if args.epochs else name
        if case in results["cases"]:
            continue
        scan, count, held_out = CASES[name]
        subset = runs / "sets" / name
        chosen = corrected_subset(dataset, scan, count, subset)
        repeat = max(1, round(REPEAT_TARGET / count))
        cost = _train(case, subset, repeat, args.init, runs / case, args.threads, args.epochs)
        model = str(runs / case / "model")
        measured = evaluate(model, [held_out, "other"], runs / case / "eval", args.threads)
        results["cases"][case] = {**({"epochs": args.epochs} if args.epochs else {}),
            "trained_on": scan, "corrected_slices": count, "slices": chosen, "repeat": repeat, "held_out": held_out,
            "train": cost | {"threads": args.threads}, **measured,
            "domain_check": domain_flags(model, [held_out, "other"], runs / case / "eval" / "data", args.threads)}
        save()
    if args.final and "final" not in results:
        out = runs / "final"
        cost = _run([sys.executable, "-m", "tevia", "train", "--config", CONFIG, "--init", args.init,
                     f"train.threads={args.threads}", f"train.out_dir={out}"], args.threads)
        model = str(out / "model")
        measured = evaluate(model, everything, out / "eval", args.threads)
        results["final"] = {
            "command": f"tevia train --config {CONFIG} --init {args.init}", "corrected_slices": 128,
            "train": cost | {"threads": args.threads}, "other": measured["other"],
            "seen_radiopaedia (trained on)": {name: measured[name] for name in ("radiopaedia-1", "radiopaedia-2")},
            "eval_wall_minutes": measured["wall_minutes"],
            "domain_check": domain_flags(model, everything, out / "eval" / "data", args.threads)}
        save()
    results["curve"] = curve(results, runs)
    save()
    log.info("wrote %s", result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
