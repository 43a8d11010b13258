"""A PNG gallery of segmentation cases: image, ground truth and prediction overlays.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tevia.files import atomic_path

__all__ = ["GalleryCase", "overlay", "save_gallery", "GT_COLOR", "PRED_COLOR"]

GT_COLOR = (0.1, 0.9, 0.2)
PRED_COLOR = (1.0, 0.2, 0.1)


@dataclass
class GalleryCase:
    """One case of the gallery.

    Attributes:
        image: float array (H, W) or (C, H, W) in [0, 1] (C = 1 or 3).
        gt: ground-truth mask (H, W), non-zero = foreground.
        pred: predicted mask (H, W), non-zero = foreground.
        name: the case name.
        dice: the case's Dice.
        group: a label such as "best" or "worst".
        text: the prompt used (shown under the title when given).
    """

    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    name: str
    dice: float
    group: str = ""
    text: str = ""


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from (H, W), (1, H, W) or (3, H, W)."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (1, H, W) or (3, H, W), got shape {np.shape(image)}")
    return np.clip(arr, 0.0, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float], alpha: float = 0.35) -> np.ndarray:
    """The image with the mask tinted in a colour.

    Args:
        image: (H, W) or (C, H, W) float in [0, 1].
        mask: (H, W), non-zero = foreground.
        color: RGB in [0, 1].
        alpha: tint opacity.

    Returns:
        (H, W, 3) float array in [0, 1].
    """
    rgb = _rgb(image)
    fg = np.asarray(mask) != 0
    if fg.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {fg.shape} does not match image shape {rgb.shape[:2]}")
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * np.asarray(color, dtype=np.float32)
    return rgb


def _panel(ax, picture: np.ndarray, mask: np.ndarray | None, color: tuple[float, float, float]) -> None:
    ax.imshow(picture, interpolation="nearest")
    if mask is not None and np.any(mask) and not np.all(mask):
        ax.contour(np.asarray(mask, dtype=np.float32), levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def save_gallery(cases: list[GalleryCase], out_png: str | Path, title: str = "") -> Path:
    """Write a gallery PNG: one column per case, rows image / ground truth / prediction.

    The file is written to a temporary name and renamed, so an existing file is never left
    half-written.

    Args:
        cases: the cases, shown left to right.
        out_png: the PNG path.
        title: the figure title.

    Returns:
        The PNG path.
    """
    if not cases:
        raise ValueError("cases must hold at least one case, got an empty list")
    out_png = Path(out_png)
    columns = len(cases)
    figure = Figure(figsize=(2.3 * columns, 7.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, columns, squeeze=False)
    for column, case in enumerate(cases):
        label = f"{case.group}: " if case.group else ""
        heading = f"{label}Dice {case.dice:.3f}\n" + "\n".join(textwrap.wrap(case.name, 28))
        if case.text:
            heading += "\n" + "\n".join(textwrap.wrap(f'"{case.text}"', 34)[:3])
        axes[0, column].set_title(heading, fontsize=6.5)
        _panel(axes[0, column], _rgb(case.image), None, GT_COLOR)
        _panel(axes[1, column], overlay(case.image, case.gt, GT_COLOR), case.gt, GT_COLOR)
        _panel(axes[2, column], overlay(case.image, case.pred, PRED_COLOR), case.pred, PRED_COLOR)
    axes[1, 0].set_ylabel("ground truth", fontsize=8)
    axes[2, 0].set_ylabel("prediction", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png, ".png") as temporary:
        figure.savefig(temporary, format="png")
    return out_png
