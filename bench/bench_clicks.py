"""Segmentation quality with simulated corrective clicks (issue 17) -> bench/clicks.json.

For a model with click inputs, on a QaTa-layout split measured at 224 x 224 (QaTa's own):
mean and pooled Dice with text only and after 1..K clicks (each at the centre of the largest
error region, tevia.commands.evaluate_clicks), NoC@85 and NoC@90, with each image's text and with
empty text (what the clicks do without the text).

Usage (from the repository root):
    python bench/bench_clicks.py --model runs/default-qata-clicks/model
    python bench/bench_clicks.py --model M --limit 32 --out /tmp/clicks.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Subset

from tevia.commands.evaluate_clicks import CLICK_PROTOCOL, evaluate_clicks
from tevia.training.data.dataset import CSVSegmentationDataset
from tevia.inference.segmenter import Segmenter

log = logging.getLogger("bench_clicks")

SHARED = Path(os.environ.get("TEVIA_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder with click inputs")
    parser.add_argument("--data", default=str(SHARED / "qata-cov19"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-clicks", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (all by default)")
    parser.add_argument("--empty-limit", type=int, default=None,
                        help="the empty-text run on only the first N images (all by default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_name("clicks.json")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    segmenter = Segmenter.load(args.model, device="cpu")
    full = CSVSegmentationDataset(args.data, args.split, image_size=(224, 224), channels=segmenter.spec.in_channels)
    n = min(args.limit or len(full), len(full))
    given = evaluate_clicks(segmenter, Subset(full, range(n)), args.max_clicks, ("given",))
    n_empty = min(args.empty_limit or n, n)
    empty = evaluate_clicks(segmenter, Subset(full, range(n_empty)), args.max_clicks, ("empty",))
    result = {
        "model": segmenter.spec.name, "model_path": str(args.model), "data": f"{Path(args.data).name}/{args.split}.csv",
        "eval_size": [224, 224], "threshold": segmenter.spec.threshold, "max_clicks": args.max_clicks,
        "protocol": CLICK_PROTOCOL,
        "text_given": {"n": given["n"], **given["given"]},
        "text_empty": {"n": empty["n"], **empty["empty"]},
        "seconds": given["seconds"] + empty["seconds"],
        "torch_threads": args.threads,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s: text Dice mean %s", args.out, result["text_given"]["dice_mean"])


if __name__ == "__main__":
    main()
