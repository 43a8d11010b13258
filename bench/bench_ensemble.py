"""What averaging several trained models buys on QaTa val (issue 16): each model's pooled and mean
Dice, and those of the mean of their probabilities (the ensemble), on all of val.csv with each
image's own description, masks at 224 x 224 (the model card's setting, `tevia evaluate`'s
pipeline: tevia.commands.evaluate.predict_probabilities). Writes bench/ensemble.json.

An ensemble of N models costs N encoder and decoder passes per slice, so it is measured here to
size what seeds alone can add, not shipped.

    python bench/bench_ensemble.py --models default runs/recipes/e9-s1/model runs/recipes/e9-s2/model
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))

from tevia.training.data.dataset import CSVSegmentationDataset  # noqa: E402
from tevia.commands.evaluate import predict_probabilities  # noqa: E402
from tevia.inference.segmenter import Segmenter  # noqa: E402
from tevia.metrics import SegmentationMetrics  # noqa: E402

log = logging.getLogger("bench_ensemble")


def probabilities(model: str, data: str, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, 224, 224) float16, ground truth (N, 224, 224) bool) of one model on a split."""
    segmenter = Segmenter.load(model, device="cpu")
    dataset = CSVSegmentationDataset(data, split, image_size=(224, 224), channels=segmenter.spec.in_channels)
    chunks, truths = [], []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size):
            chunks.append(predict_probabilities(segmenter, batch["image"], batch["text"]).numpy().astype(np.float16))
            truths.append(batch["mask"][:, 0].numpy() > 0.5)
    return np.concatenate(chunks), np.concatenate(truths)


def scores(probability: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Pooled and mean Dice (tevia.metrics.SegmentationMetrics) of probabilities thresholded."""
    metrics = SegmentationMetrics(with_hd95=False)
    for index, (p, g) in enumerate(zip(probability, truth)):
        metrics.update(p.astype(np.float32) > threshold, g, str(index))
    result = metrics.compute()
    return {"dice_global": round(result["dice_global"], 4), "dice_mean": round(result["dice_mean"], 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders or bundled names, 2 or more")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "qata-cov19"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "ensemble.json"))
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("--models needs at least 2 models to average")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    members, total, truth = {}, None, None
    for model in args.models:
        probability, truth = probabilities(model, args.data, args.split, args.batch_size)
        members[model] = scores(probability, truth)
        log.info("%s: %s", model, members[model])
        total = probability.astype(np.float32) if total is None else total + probability
    ensemble = scores(total / len(args.models), truth)
    log.info("mean of the %d models' probabilities: %s", len(args.models), ensemble)
    result = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "data": f"{args.data}/{args.split}.csv", "n": int(len(truth)), "members": members,
        "member_mean": {key: round(float(np.mean([m[key] for m in members.values()])), 4)
                        for key in ("dice_global", "dice_mean")},
        "ensemble": ensemble, "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
