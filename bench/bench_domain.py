"""Benchmark of the out-of-domain check (tevia.inference.domain) of a model; writes bench/domain.json.

Negatives: every val X-ray of the model's data set (false alarms, target <= 1%). Positives,
all real and none a frontal chest X-ray:
- every CT and MRI volume in ../shared/data/volumes (files and DICOM series), slice by slice
  as the pipeline slices them (axial), and per volume (the warning ``segment_volume`` gives,
  metadata included);
- the same volumes' axial, coronal and sagittal slices saved as 8-bit PNGs (percentile
  scaling, as the pipeline scales volumes), read back as 2D images;
- ../shared/data/covid-ct-slices (real axial chest CT slices, train and val);
- the photographs and the MRI slice that matplotlib ships as sample data.
Reports per set the AUROC of the slice scores against the val scores and the share of slices
above the model's threshold (the operating point calibrated by ``tevia domain``), and the
cost of the check next to the vision encoder's.

    python bench/bench_domain.py [--model default] [--data ../shared/data/qata-cov19]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))
SHARED = REPO.parent / "shared" / "data" if (REPO.parent / "shared").is_dir() else REPO.parents[1] / "shared" / "data"
log = logging.getLogger("bench_domain")

VOLUMES = ["totalseg-example-ct/ct.nii.gz", "totalseg-example-ct/ct_112slices.nii.gz",
           "totalseg-example-ct-dicom/series", "spleen-ct/ct.nii.gz", "spinalcord-t2-mri/t2.nii.gz",
           "ct-head-dicom"]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([negatives, positives])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[len(negatives):].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(negatives) * len(positives)))


def set_result(name: str, scores: np.ndarray, val: np.ndarray, threshold: float) -> dict:
    flagged = float(np.mean(scores > threshold))
    log.info("%-40s n=%5d detected %.3f AUROC %.4f", name, len(scores), flagged, auroc(val, scores))
    return {"set": name, "slices": int(len(scores)), "detected": round(flagged, 4),
            "auroc": round(auroc(val, scores), 4), "score_median": round(float(np.median(scores)), 3)}


def volume_pngs(image: sitk.Image, folder: Path, stem: str) -> list[Path]:
    """Non-constant axial, coronal and sagittal slices as 8-bit PNGs (0.5-99.5 percentile scaling)."""
    from tevia.inference.pipeline import volume_slices
    from tevia.volume.preprocess import IntensityScaler

    paths = []
    for axis in ("axial", "coronal", "sagittal"):
        volume, array, layout, percentiles = volume_slices(image, axis)
        scaler, _ = IntensityScaler.from_volume(array, None, percentiles)
        for index, plane in enumerate(layout.view(array)):
            if plane.min() == plane.max():
                continue
            path = folder / f"{stem}-{axis}-{index:03d}.png"
            sitk.WriteImage(sitk.GetImageFromArray(np.round(scaler(plane) * 255).astype(np.uint8)), str(path))
            paths.append(path)
    return paths


def other_images(folder: Path) -> dict[str, Path]:
    """matplotlib's sample photographs and its 256x256 MRI slice (raw big-endian uint16, as NRRD)."""
    import matplotlib

    data = Path(matplotlib.get_data_path()) / "sample_data"
    mri = np.frombuffer(gzip.open(data / "s1045.ima.gz").read(), ">u2").reshape(256, 256).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(mri), str(folder / "mri-s1045.nrrd"))
    return {"photo grace_hopper.jpg": data / "grace_hopper.jpg",
            "photo Minduka_Present_Blue_Pack.png": data / "Minduka_Present_Blue_Pack.png",
            "MRI slice s1045 (matplotlib)": folder / "mri-s1045.nrrd"}


def check_cost(segmenter, repeats: int = 20) -> dict:
    """Milliseconds per slice of the vision encoder and of the domain score on a batch of 16."""
    images = torch.rand(16, *segmenter.spec.image_size)
    features = segmenter.encode_images(images)
    began = time.perf_counter()
    for _ in range(repeats):
        segmenter.encode_images(images)
    encode = (time.perf_counter() - began) / repeats / 16 * 1000
    began = time.perf_counter()
    for _ in range(repeats):
        segmenter.domain.scores(features.maps)
    score = (time.perf_counter() - began) / repeats / 16 * 1000
    return {"encode_ms_per_slice": round(encode, 3), "check_ms_per_slice": round(score, 4),
            "check_share_of_encode": round(score / encode, 4)}


def main() -> int:
    from tevia.commands.domain import image_features, split_features
    from tevia.inference.segmenter import Segmenter
    from tevia.inference.pipeline import segment_volume
    from tevia.volume.io import read_input

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=SHARED / "qata-cov19")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "domain.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    segmenter = Segmenter.load(args.model, device="cpu")
    profile = segmenter.domain
    if profile is None:
        raise SystemExit(f"model {args.model} has no domain profile: run tevia domain first")
    val = profile.scores_of(split_features(segmenter, args.data, "val"))
    false_alarms = float(np.mean(val > profile.threshold))
    log.info("val false alarms %.4f at threshold %.3f", false_alarms, profile.threshold)
    sets, volumes, everything = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in VOLUMES:
            image, _ = read_input(SHARED / "volumes" / name)
            scores = profile.scores_of(image_features(segmenter, image))
            sets.append(set_result(f"volume slices: {name}", scores, val, profile.threshold))
            result = segment_volume(segmenter, image, ["Unilateral pulmonary infection, one infected area, "
                                                       "lower left lung."])
            volumes.append({"volume": name, "size": list(image.GetSize()), "warned": result.domain["warning"] is not None,
                            "unlike": result.domain["unlike"], "slices": result.domain["slices"],
                            "warning": result.domain["warning"]})
            pngs = volume_pngs(image, tmp, name.replace("/", "_"))
            png_scores = np.concatenate([profile.scores_of(image_features(segmenter, p)) for p in pngs])
            sets.append(set_result(f"8-bit PNG slices (3 axes): {name}", png_scores, val, profile.threshold))
            everything += [scores, png_scores]
        for split in ("train", "val"):
            scores = profile.scores_of(split_features(segmenter, SHARED / "covid-ct-slices", split))
            sets.append(set_result(f"covid-ct-slices {split}", scores, val, profile.threshold))
            everything.append(scores)
        for name, path in other_images(tmp).items():
            scores = profile.scores_of(image_features(segmenter, path))
            sets.append(set_result(name, scores, val, profile.threshold))
            everything.append(scores)
    positives = np.concatenate(everything)
    report = {
        "model": args.model, "trained_on": profile.description, "threshold": round(profile.threshold, 4),
        "calibration": profile.calibration,
        "val_xrays": int(len(val)), "val_false_alarms": round(false_alarms, 4),
        "non_xray_slices": int(len(positives)), "detected_overall": round(float(np.mean(positives > profile.threshold)), 4),
        "auroc_overall": round(auroc(val, positives), 4),
        "sets": sets, "volumes": volumes, "cost": check_cost(segmenter),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s: val false alarms %.4f, detected %.4f, AUROC %.4f", args.out, false_alarms,
             report["detected_overall"], report["auroc_overall"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
