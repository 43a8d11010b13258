"""Simulated corrective clicks, the way interactive segmentation is trained and evaluated.

The next click goes to the centre of the largest error region of the current prediction:
the largest connected region (by area) of missed target (false negative: a positive click)
or of false foreground (false positive: a negative click), at its pixel farthest from the
region's border (the maximum of its Euclidean distance transform). Used by training
(tevia.training.click_training) and by the click benchmark (bench/bench_clicks.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tevia.model.clicks import Click

__all__ = ["next_click", "dice"]


def _largest_region(error: np.ndarray) -> tuple[int, np.ndarray | None]:
    labels, count = ndimage.label(error)
    if count == 0:
        return 0, None
    sizes = np.bincount(labels.ravel())[1:]
    k = int(np.argmax(sizes))
    return int(sizes[k]), labels == k + 1


def next_click(prediction: np.ndarray, target: np.ndarray) -> Click | None:
    """The corrective click for a bool prediction against a bool target (both (H, W)); None
    when they agree everywhere."""
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(f"prediction and target must be two (H, W) arrays of one shape, "
                         f"got {prediction.shape} and {target.shape}")
    missed_size, missed = _largest_region(target & ~prediction)
    false_size, false = _largest_region(prediction & ~target)
    if missed is None and false is None:
        return None
    positive = missed_size >= false_size
    region = missed if positive else false
    # Padding makes the image border count as the region's border.
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(float(row), float(col), bool(positive))


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two bool masks; 1 when both are empty."""
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total
