"""Corrective clicks as network inputs: rendering points to maps, and their injection into the decoder.

A click is a pixel (row, column) at the model's input resolution with a sign: positive
("this belongs to the target") or negative ("this does not"). `render_clicks` draws each
click into one of two maps (channel 0 positive, channel 1 negative), as a disc ("disc") or as
a decaying distance map ("distance": exp(-d / click_scale), d the distance to the nearest click
of that sign), which also tells the coarse decoder stages, whose cells are 16 or 32 pixels
wide, how far each pixel is from a click (model.click_encoding).
`ClickInjection` turns the two maps into an additive feature for the input of each decoder
stage and of the head; the image encoder never sees them, so cached image features stay
valid and a click costs one decoder pass. Its last convolutions start at zero: a network
with click inputs computes exactly what the same network without them computes until it
is trained with clicks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Click", "ClickInjection", "render_clicks", "click_radius", "click_scale", "validate_clicks",
           "to_model_size", "CLICK_ENCODINGS"]

CLICK_ENCODINGS = ("disc", "distance")


class Click(NamedTuple):
    """One click at the model's resolution: row, column (pixels, may be fractional) and sign."""

    row: float
    col: float
    positive: bool


def click_radius(size: tuple[int, int]) -> int:
    """Disc radius in pixels at a model resolution (4 at 128 x 128)."""
    return max(2, round(min(size) / 32))


def click_scale(size: tuple[int, int]) -> float:
    """Decay length in pixels of the "distance" encoding (16 at 128 x 128: 1/8 of the smaller side)."""
    return min(size) / 8


def to_model_size(row: float, col: float, size: tuple[int, int], model_size: tuple[int, int]) -> tuple[float, float]:
    """A point of an image of `size` -> the same point (pixel centres aligned) at `model_size`,
    kept inside the model's image: the centre of an edge pixel maps outside it when the model's
    side is the smaller (row 0 of 224 -> -0.21 at 128)."""
    (h, w), (mh, mw) = size, model_size
    return (min(max((row + 0.5) * mh / h - 0.5, 0.0), mh - 1.0),
            min(max((col + 0.5) * mw / w - 0.5, 0.0), mw - 1.0))


def validate_clicks(clicks: list[Click], size: tuple[int, int], where: str = "clicks") -> None:
    """Raises ValueError naming the first click that is not a finite point inside the image."""
    h, w = size
    for i, click in enumerate(clicks):
        row, col = float(click.row), float(click.col)
        if not (0 <= row <= h - 1 and 0 <= col <= w - 1):
            raise ValueError(f"{where}[{i}] = ({row}, {col}) lies outside the {h} x {w} image; "
                             "a click must be a pixel inside it")


def render_clicks(clicks: list[list[Click]], size: tuple[int, int], device: torch.device | str = "cpu",
                  out: torch.Tensor | None = None, encoding: str = "disc") -> torch.Tensor:
    """Click maps (B, 2, H, W), channel 0 for positive and channel 1 for negative clicks:
    "disc": 1 inside a disc of `click_radius(size)` around each click, else 0; "distance":
    exp(-d / click_scale(size)), d the distance to the nearest click (1 on it). `out` (drawn
    into in place) keeps earlier clicks."""
    if encoding not in CLICK_ENCODINGS:
        raise ValueError(f"click encoding must be one of {CLICK_ENCODINGS}, got {encoding!r}")
    h, w = size
    maps = out if out is not None else torch.zeros(len(clicks), 2, h, w, device=device)
    r, scale = click_radius(size), click_scale(size)
    rows = torch.arange(h, device=maps.device, dtype=torch.float32)[:, None]
    cols = torch.arange(w, device=maps.device, dtype=torch.float32)[None, :]
    for b, sample in enumerate(clicks):
        for click in sample:
            squared = (rows - float(click.row)) ** 2 + (cols - float(click.col)) ** 2
            value = (squared <= r * r).float() if encoding == "disc" else torch.exp(-squared.sqrt() / scale)
            channel = 0 if click.positive else 1
            maps[b, channel] = torch.maximum(maps[b, channel], value.to(maps.dtype))
    return maps


class ClickInjection(nn.Module):
    """Click maps (B, 2, H, W) -> an additive feature (B, widths[level], h, w) for decoder level
    `level` (0..2: the stages' inputs, coarsest first; 3: the head's input), whose feature map
    there is `features` (B, widths[level], h, w).

    The maps are max-pooled to the level's resolution (a click never vanishes), then a 3x3
    convolution, GELU and a zero-initialised 1x1 convolution. With `context`, the 3x3
    convolution also reads `features`: the correction can depend on what the decoder sees
    around the click (the region's edge, the current mask), not only on where the click is.
    An image without clicks (all-zero maps) gets exactly zero, so in a batch mixing images with
    and without clicks the latter get the text-only output. `encoding` ("disc" or "distance")
    is how `render` draws the maps it was trained on.
    """

    def __init__(self, widths: list[int], hidden: int = 16, encoding: str = "disc", context: bool = False) -> None:
        super().__init__()
        if encoding not in CLICK_ENCODINGS:
            raise ValueError(f"model.click_encoding must be one of {CLICK_ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
        self.context = context
        self.widths = list(widths)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 + (width if context else 0), hidden, 3, padding=1), nn.GELU(),
                          nn.Conv2d(hidden, width, 1))
            for width in widths
        )
        for level in self.levels:
            nn.init.zeros_(level[-1].weight)
            nn.init.zeros_(level[-1].bias)

    def render(self, clicks: list[list[Click]], size: tuple[int, int], device: torch.device | str = "cpu",
               out: torch.Tensor | None = None) -> torch.Tensor:
        """`render_clicks` in this injection's encoding (the one it was trained with)."""
        return render_clicks(clicks, size, device, out, self.encoding)

    def forward(self, maps: torch.Tensor, level: int, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_max_pool2d(maps.to(features.dtype), tuple(features.shape[-2:]))
        present = (maps.flatten(1).amax(1) > 0).to(features.dtype)[:, None, None, None]
        inputs = torch.cat([pooled, features], 1) if self.context else pooled
        return self.levels[level](inputs) * present
