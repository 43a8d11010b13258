"""Evaluation with simulated corrective clicks: Dice after 0..K clicks and NoC per image.

Per image and text mode: the text-only prediction first (click 0), then K times: the next
click at the centre of the largest error region of the current prediction against the
ground truth (tevia.training.click_simulation.next_click), measured at the data's resolution and
mapped to the model's; the decoder runs again with all clicks so far, on the image features
encoded once. An image whose prediction is already exact gets no further clicks. NoC@t is
the number of clicks after which Dice first reaches t (0 when the text alone does); images
that do not reach it within K clicks count as K and are also counted apart (`failed`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tevia.training.click_simulation import dice, next_click
from tevia.model.clicks import Click, to_model_size
from tevia.inference.transforms import model_input, model_text, resize_planes

if TYPE_CHECKING:
    from tevia.inference.segmenter import Segmenter

__all__ = ["evaluate_clicks", "to_model_click", "NOC_THRESHOLDS", "CLICK_PROTOCOL"]

log = logging.getLogger(__name__)

NOC_THRESHOLDS = (0.85, 0.90)
CLICK_PROTOCOL = ("click k at the centre (distance-transform maximum) of the largest error region of the "
                  "prediction after k - 1 clicks, positive in a missed region, negative in a false one; "
                  "NoC capped at max_clicks (images never reaching the threshold count as max_clicks, "
                  "'failed' counts them)")
"""How the clicks are simulated and NoC counted, in words (for the JSON that reports them)."""


def to_model_click(click: Click, data_size: tuple[int, int], model_size: tuple[int, int]) -> Click:
    """A click at the data's resolution -> the same point at the model's (`to_model_size`)."""
    return Click(*to_model_size(click.row, click.col, data_size, model_size), click.positive)


def _masks(segmenter: Segmenter, features, text: torch.Tensor, clicks: list[list[Click]] | None,
           size: tuple[int, int], threshold: float) -> np.ndarray:
    return (resize_planes(segmenter.decode(features, text, clicks), size) > threshold).numpy()


def _run_mode(segmenter: Segmenter, features, text: torch.Tensor, truth: np.ndarray, max_clicks: int,
              threshold: float) -> np.ndarray:
    """(B, K + 1, 3) per image and click count: Dice, intersection, prediction + truth sum."""
    size = tuple(truth.shape[-2:])
    b = truth.shape[0]
    clicks: list[list[Click]] = [[] for _ in range(b)]
    done = np.zeros(b, dtype=bool)
    pred = _masks(segmenter, features, text, None, size, threshold)
    rows = np.zeros((b, max_clicks + 1, 3))
    for k in range(max_clicks + 1):
        for i in range(b):
            rows[i, k] = dice(pred[i], truth[i]), (pred[i] & truth[i]).sum(), pred[i].sum() + truth[i].sum()
        if k == max_clicks:
            break
        for i in range(b):
            click = None if done[i] else next_click(pred[i], truth[i])
            if click is None:
                done[i] = True
            else:
                clicks[i].append(to_model_click(click, size, segmenter.spec.image_size))
        if done.all():
            rows[:, k + 1:] = rows[:, k:k + 1]
            break
        new = _masks(segmenter, features, text, clicks, size, threshold)
        pred = np.where(done[:, None, None], pred, new)
    return rows


def _summary(rows: np.ndarray, max_clicks: int) -> dict[str, Any]:
    dice_per_click = rows[:, :, 0]
    summary: dict[str, Any] = {
        "dice_mean": [round(float(v), 4) for v in dice_per_click.mean(0)],
        "dice_pooled": [round(float(2 * i / max(t, 1)), 4) for i, t in zip(rows[:, :, 1].sum(0), rows[:, :, 2].sum(0))],
    }
    for t in NOC_THRESHOLDS:
        reached = dice_per_click >= t
        noc = np.where(reached.any(1), reached.argmax(1), max_clicks)
        summary[f"noc@{round(t * 100)}"] = {
            "mean": round(float(noc.mean()), 3), "median": float(np.median(noc)),
            "failed": int((~reached.any(1)).sum()), "by_clicks": np.bincount(noc, minlength=max_clicks + 1).tolist(),
        }
    return summary


def evaluate_clicks(segmenter: Segmenter, dataset: Dataset, max_clicks: int = 5, text_modes: tuple[str, ...] = ("given",),
                    batch_size: int = 16, threshold: float = 0.5) -> dict[str, Any]:
    """Dice with text only and after 1..max_clicks simulated clicks, per text mode ("given":
    each image's own text; "empty": no text), over a data set at the resolution it is measured at.

    Returns {mode: {"dice_mean": [K + 1 values], "dice_pooled": [...], "noc@85": {...},
    "noc@90": {...}}, "n": images, "max_clicks": K, "seconds": wall time}.
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    unknown = sorted(set(text_modes) - {"given", "empty"})
    if unknown:
        raise ValueError(f"text modes must be 'given' or 'empty', got {unknown}")
    started = time.perf_counter()
    rows: dict[str, list[np.ndarray]] = {mode: [] for mode in text_modes}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for step, batch in enumerate(loader, start=1):
        features = segmenter.encode_images(model_input(batch["image"], segmenter.spec))
        truth = batch["mask"][:, 0].numpy() > 0.5
        for mode in text_modes:
            texts = [model_text(t) if mode == "given" else "" for t in batch["text"]]
            text = segmenter.encode_text(texts)
            rows[mode].append(_run_mode(segmenter, features, text, truth, max_clicks, threshold))
        log.info("click evaluation: %d/%d batches (%.0f s)", step, len(loader), time.perf_counter() - started)
    result: dict[str, Any] = {mode: _summary(np.concatenate(r), max_clicks) for mode, r in rows.items()}
    result.update(n=len(dataset), max_clicks=max_clicks, seconds=round(time.perf_counter() - started, 1))
    return result
