"""`tevia evaluate`: a model's metrics on a CSV split, with per-case results and a gallery.

Library API: `evaluate_model(segmenter, dataset, batch_size, threshold)`; the command wraps it
and writes ``metrics.json``, ``per_case.csv`` and ``gallery.png`` (best and worst 4 cases).
With ``--clicks N`` (a model with click inputs), ``metrics.json`` also holds ``clicks``: Dice
after 0..N simulated corrective clicks and NoC@85/90 (tevia.commands.evaluate_clicks), with the texts of
``--text-mode`` (``empty``: what the clicks do without text).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tevia.device import add_precision_argument
from tevia.files import atomic_write_text
from tevia.training.data.dataset import TEXT_MODES, CSVSegmentationDataset
from tevia.metrics import PER_CASE_FIELDS, SegmentationMetrics
from tevia.inference.transforms import model_input, model_text, resize_planes

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = [
    "configure_parser",
    "main",
    "run",
    "evaluate_model",
    "predict_masks",
    "predict_probabilities",
    "select_gallery_cases",
    "write_results",
    "write_gallery",
    "PER_CASE_COLUMNS",
]

log = logging.getLogger(__name__)

PER_CASE_COLUMNS = (*PER_CASE_FIELDS, "text")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help='model folder or bundled model name (e.g. "default")')
    parser.add_argument("--data", required=True, help="data set folder holding <split>.csv (QaTa layout)")
    parser.add_argument("--split", default="val", help="CSV file name without .csv (default: val)")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, per_case.csv, gallery.png")
    parser.add_argument("--text-mode", choices=TEXT_MODES, default="given",
                        help="given: the CSV's descriptions; empty: no text; shuffled: descriptions "
                             "permuted among the images (measures what the text adds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled text permutation")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    add_precision_argument(parser)
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold of the masks (default: the model's, 0.5 unless set)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad CSV rows (counted) instead of stopping")
    parser.add_argument("--eval-size", type=int, nargs=2, metavar=("H", "W"), default=[224, 224],
                        help="resolution masks are measured at (default 224 224, QaTa's own; 0 0 = the model's input size)")
    parser.add_argument("--no-hd95", action="store_true", help="skip the HD95 distance (faster)")
    parser.add_argument("--clicks", type=int, default=None, metavar="N",
                        help="also measure mean and pooled Dice after 0..N simulated corrective clicks and "
                             "NoC@85/NoC@90 (a model with click inputs only; under `clicks` in metrics.json)")


def _check_arguments(batch_size: int, threshold: float) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")


def predict_masks(segmenter: Segmenter, images: torch.Tensor, texts: list[str], threshold: float) -> np.ndarray:
    """Binary masks for a batch, each image with its own text.

    The vision encoder runs once for the batch, each distinct text is embedded once (the
    segmenter caches embeddings per string), and one decoder call takes the per-image texts.

    Args:
        segmenter: a loaded `tevia.inference.segmenter.Segmenter`.
        images: (B, C, H, W) float32 in [0, 1] with the model's channels, at any size: the model
            sees them resized to its input size, and its probabilities are resized back before
            thresholding (tevia.inference.transforms), so masks are measured at the data's resolution.
        texts: B descriptions, encoded as training encodes them (tevia.inference.transforms.model_text).
        threshold: probability threshold.

    Returns:
        bool array (B, H, W).
    """
    return (predict_probabilities(segmenter, images, texts) > threshold).numpy()


def predict_probabilities(segmenter: Segmenter, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """`predict_masks` before the threshold: float32 probabilities (B, H, W) at the images' size."""
    features = segmenter.encode_images(model_input(images, segmenter.spec))
    probabilities = segmenter.decode(features, segmenter.encode_text([model_text(t) for t in texts]))
    return resize_planes(probabilities, tuple(images.shape[-2:]))


def evaluate_model(
    segmenter: Segmenter,
    dataset: Dataset,
    batch_size: int = 16,
    threshold: float = 0.5,
    with_hd95: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Segment every item of a data set with its text and measure the result.

    Args:
        segmenter: a loaded `tevia.inference.segmenter.Segmenter`.
        dataset: items as `CSVSegmentationDataset` gives them (image (C, H, W), mask (1, H, W),
            text, name) at the model's image size and channels; a `Subset` works too.
        batch_size: images per forward pass.
        threshold: probability threshold of the predicted masks.
        with_hd95: compute HD95 per case.

    Returns:
        (metrics, per_case): metrics has the keys of `SegmentationMetrics.compute` plus
        ``threshold``, ``seconds`` (the whole evaluation), ``images_per_second`` (n / seconds),
        ``inference_seconds`` (model calls only) and ``inference_images_per_second``;
        per_case has one row per item with `PER_CASE_COLUMNS`.
    """
    _check_arguments(batch_size, threshold)
    if len(dataset) == 0:
        raise ValueError("dataset must hold at least one item, got an empty data set")
    metrics = SegmentationMetrics(with_hd95=with_hd95)
    texts: list[str] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)  # texts and names collate to lists
    started = time.perf_counter()
    inference_seconds = 0.0
    report_every = max(1, len(loader) // 10)
    for step, batch in enumerate(loader, start=1):
        tick = time.perf_counter()
        predictions = predict_masks(segmenter, batch["image"], batch["text"], threshold)
        inference_seconds += time.perf_counter() - tick
        ground_truth = batch["mask"][:, 0].numpy() > 0.5
        for prediction, gt, name in zip(predictions, ground_truth, batch["name"]):
            metrics.update(prediction, gt, name)
        texts.extend(batch["text"])
        if step % report_every == 0 or step == len(loader):
            log.info("evaluated %d/%d images", len(texts), len(dataset))
    seconds = time.perf_counter() - started
    result = metrics.compute()
    result.update(
        threshold=threshold,
        seconds=round(seconds, 3),
        images_per_second=round(result["n"] / seconds, 3),
        inference_seconds=round(inference_seconds, 3),
        inference_images_per_second=round(result["n"] / max(inference_seconds, 1e-9), 3),
    )
    per_case = [{**row, "text": text} for row, text in zip(metrics.per_case, texts)]
    return result, per_case


def select_gallery_cases(per_case: list[dict[str, Any]], count: int = 4) -> list[tuple[int, str]]:
    """(index, "best"/"worst") of the `count` highest-Dice cases (best first), then the `count`
    lowest (worst first).

    Ties are broken by name; with fewer than 2 x count cases each case appears once.
    """
    order = sorted(range(len(per_case)), key=lambda i: (-float(per_case[i]["dice"]), str(per_case[i]["name"])))
    best = order[:count]
    worst = [i for i in reversed(order) if i not in best][:count]
    return [(i, "best") for i in best] + [(i, "worst") for i in worst]



def _json_safe(value: Any) -> Any:
    """NaN and infinity become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(out_dir: str | Path, metrics: dict[str, Any], per_case: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``per_case.csv`` (each to a temporary name, then renamed).

    Undefined values (NaN HD95) are written as JSON null and as empty CSV cells.

    Returns:
        The two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, cases_path = out_dir / "metrics.json", out_dir / "per_case.csv"
    atomic_write_text(metrics_path, json.dumps({k: _json_safe(v) for k, v in metrics.items()}, indent=2) + "\n")
    rows = [{k: ("" if _json_safe(row.get(k)) is None else row.get(k)) for k in PER_CASE_COLUMNS} for row in per_case]
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as buffer:
        writer = csv.DictWriter(buffer, fieldnames=PER_CASE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        buffer.seek(0)
        atomic_write_text(cases_path, buffer.read())
    return metrics_path, cases_path


def write_gallery(segmenter: Segmenter, dataset: Dataset, per_case: list[dict[str, Any]], threshold: float,
                  out_png: str | Path, title: str = "") -> Path:
    """The best and worst 4 cases (by Dice) drawn with their ground truth and prediction."""
    from tevia.commands.gallery import GalleryCase, save_gallery

    chosen = select_gallery_cases(per_case)
    items = [dataset[i] for i, _ in chosen]
    images = torch.stack([item["image"] for item in items])
    predictions = predict_masks(segmenter, images, [item["text"] for item in items], threshold)
    cases = [
        GalleryCase(image=item["image"].numpy(), gt=item["mask"][0].numpy(), pred=prediction,
                    name=item["name"], dice=float(per_case[index]["dice"]), group=group, text=item["text"])
        for (index, group), item, prediction in zip(chosen, items, predictions)
    ]
    return save_gallery(cases, out_png, title)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The `tevia evaluate` command without its error handling; returns metrics.json's content."""
    from tevia.inference.segmenter import Segmenter

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.clicks is not None and args.clicks < 1:
        raise ValueError(f"--clicks must be >= 1, got {args.clicks}")
    segmenter = Segmenter.load(args.model, device=args.device, precision=args.precision)
    if args.clicks is not None and not segmenter.spec.click_inputs:
        raise ValueError(f"--clicks needs a model with click inputs, and {segmenter.spec.name} ({args.model}) was "
                         f"trained without them: evaluate it without --clicks, or give a model trained with "
                         f"clicks (configs/default-qata-clicks.yaml)")
    threshold = segmenter.spec.threshold if args.threshold is None else args.threshold
    _check_arguments(args.batch_size, threshold)
    size = tuple(args.eval_size) if min(args.eval_size) > 0 else segmenter.spec.image_size
    full = CSVSegmentationDataset(
        args.data, args.split, image_size=size, channels=segmenter.spec.in_channels,
        skip_bad=args.skip_bad, text_mode=args.text_mode, seed=args.seed,
    )
    dataset = Subset(full, range(min(args.limit, len(full)))) if args.limit else full
    log.info("evaluating %s on %s/%s.csv: %d images, text mode %s, device %s",
             segmenter.spec.name, args.data, args.split, len(dataset), args.text_mode, segmenter.device)
    metrics, per_case = evaluate_model(segmenter, dataset, args.batch_size, threshold, with_hd95=not args.no_hd95)
    metrics.update(
        model=segmenter.spec.name,
        model_path=str(segmenter.folder) if segmenter.folder else str(args.model),
        data=str(Path(args.data).resolve()),
        split=args.split,
        text_mode=args.text_mode,
        seed=args.seed,
        device=str(segmenter.device),
        skipped_rows=len(full.skipped),
        limit=args.limit,
        eval_size=list(size),
    )
    if args.clicks is not None:
        metrics["clicks"] = _click_metrics(segmenter, dataset, args.clicks, args.batch_size, threshold)
    out = Path(args.out)
    metrics_path, cases_path = write_results(out, metrics, per_case)
    gallery = write_gallery(
        segmenter, dataset, per_case, threshold, out / "gallery.png",
        title=f"{segmenter.spec.name} on {args.split} (text {args.text_mode}): best 4 and worst 4 by Dice",
    )
    log.info("n=%d dice_global=%.4f dice_mean=%.4f iou_global=%.4f (pooled: the papers' QaTa mIoU) "
             "iou_mean=%.4f (per image) hd95_mean=%s px (%.1f s)",
             metrics["n"], metrics["dice_global"], metrics["dice_mean"], metrics["iou_global"], metrics["iou_mean"],
             f"{metrics['hd95_mean']:.2f}" if math.isfinite(metrics["hd95_mean"]) else "undefined", metrics["seconds"])
    log.info("wrote %s, %s, %s", metrics_path, cases_path, gallery)
    return metrics


def _click_metrics(segmenter: Segmenter, dataset: Dataset, max_clicks: int, batch_size: int,
                   threshold: float) -> dict[str, Any]:
    """`evaluate_clicks` with each item's text as the data set gives it (after --text-mode), logged."""
    from tevia.commands.evaluate_clicks import CLICK_PROTOCOL, evaluate_clicks

    result = evaluate_clicks(segmenter, dataset, max_clicks, ("given",), batch_size, threshold)
    clicks = {"max_clicks": max_clicks, **result["given"], "seconds": result["seconds"], "protocol": CLICK_PROTOCOL}
    log.info("with clicks: Dice mean after 0..%d clicks %s, pooled %s; NoC@85 %.2f, NoC@90 %.2f (%.1f s)",
             max_clicks, clicks["dice_mean"], clicks["dice_pooled"], clicks["noc@85"]["mean"],
             clicks["noc@90"]["mean"], clicks["seconds"])
    return clicks


def main(args: argparse.Namespace) -> int:
    """`tevia evaluate`: 0 on success, 2 with a logged message on bad input (nothing written)."""
    from tevia.checkpoint import CheckpointError
    from tevia.commands.cli import report_error

    try:
        run(args)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        return report_error("evaluate", err, log)
    return 0
