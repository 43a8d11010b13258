"""`make demo`: segment a bundled real chest X-ray from its description with the default model.

Writes the mask (PNG, 0/255) and an overlay PNG (ground truth in green, prediction in red)
under --out, and prints the Dice against the ground-truth mask. The same path as
`tevia predict` on a PNG: read, slice pipeline, write.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["main", "SAMPLES"]

SAMPLES = Path(__file__).resolve().parents[2] / "Testing" / "data" / "qata_samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tevia.commands.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model folder or bundled name (default: default)")
    parser.add_argument("--sample", type=int, default=2, help="row of Testing/data/qata_samples/samples.csv")
    parser.add_argument("--text", help="prompt to use instead of the sample's own description")
    parser.add_argument("--out", default="out/demo", help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from tevia.commands.gallery import overlay
    from tevia.inference.segmenter import Segmenter
    from tevia.metrics import dice_score
    from tevia.inference.pipeline import SegmentOptions, segment_volume
    from tevia.volume.io import read_image

    rows = list(csv.DictReader(open(SAMPLES / "samples.csv", newline="")))
    if not 0 <= args.sample < len(rows):
        parser.error(f"--sample must be in 0..{len(rows) - 1}, got {args.sample}")
    row = rows[args.sample]
    image_path = SAMPLES / "Images" / row["Image"].removeprefix("mask_")
    gt = np.asarray(Image.open(SAMPLES / "GTs" / row["Image"])) >= 128
    text = args.text or row["Description"]

    segmenter = Segmenter.load(args.model, device="auto")
    image, _ = read_image(image_path)
    # QaTa descriptions name image sides: read the prompt in that convention.
    result = segment_volume(segmenter, image, [text], SegmentOptions(convention="image"))
    import SimpleITK as sitk

    mask = sitk.GetArrayFromImage(result.labelmap).reshape(gt.shape) == 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).save(out / "mask.png")
    pixels = np.asarray(Image.open(image_path).convert("L"), dtype=np.float32) / 255.0
    with_gt = np.moveaxis(overlay(pixels, gt, (0.1, 0.9, 0.1)), -1, 0)  # (3, H, W)
    picture = overlay(with_gt, mask, (0.95, 0.15, 0.1))
    Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(out / "overlay.png")
    dice = dice_score(mask, gt)
    print(f"model: {segmenter.spec.name} ({segmenter.folder})")
    print(f"image: {image_path.name}\nprompt: {text}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"Dice against the ground truth: {dice:.3f}")
    print(f"wrote {out / 'mask.png'} and {out / 'overlay.png'} (green: ground truth, red: prediction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
