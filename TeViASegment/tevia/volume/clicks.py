"""Corrective clicks of a segment request: parsed, then located on the slices the model sees.

A request's `clicks` holds one list per prompt; each click is `{"ras": [R, A, S], "positive":
true|false}` (a point in Slicer's RAS millimetres, for any input) or, for a 2D image only,
`{"pixel": [column, row], "positive": ...}` (0-based pixel indices). A click belongs to the
slice (along the request's slice axis) nearest to its point, and refines that slice only
(tevia/PROTOCOL.md says why).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from tevia.model.clicks import Click, to_model_size
from tevia.volume.errors import BadInputError
from tevia.volume.geometry import SliceLayout

__all__ = ["RequestClick", "parse_clicks", "locate_clicks", "refine_clicked", "MAX_CLICKS"]

MAX_CLICKS = 1000
"""Most clicks one request may carry (all prompts together)."""


@dataclass(frozen=True)
class RequestClick:
    """A click as a request gives it: a RAS point (3 values) or a 2D pixel (column, row)."""

    point: tuple[float, ...]
    positive: bool
    kind: str  # "ras" or "pixel"


def _parse_one(raw: Any, where: str) -> RequestClick:
    if not isinstance(raw, dict) or "positive" not in raw or len(raw) != 2 or not ({"ras", "pixel"} & set(raw)):
        raise ValueError(f"{where} must be {{\"ras\": [R, A, S], \"positive\": true|false}} or "
                         f"{{\"pixel\": [column, row], \"positive\": true|false}}, got {str(raw)[:80]}")
    kind = "ras" if "ras" in raw else "pixel"
    point, size = raw[kind], 3 if kind == "ras" else 2
    if (not isinstance(point, list) or len(point) != size
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
        raise ValueError(f"{where}.{kind} must be a list of {size} finite numbers, got {str(point)[:80]}")
    if not isinstance(raw["positive"], bool):
        raise ValueError(f"{where}.positive must be true or false, got {str(raw['positive'])[:20]}")
    return RequestClick(tuple(float(v) for v in point), raw["positive"], kind)


def parse_clicks(raw: Any, prompt_count: int) -> list[list[RequestClick]]:
    """A request's `clicks` -> one list of clicks per prompt; ValueError says what is malformed."""
    if not isinstance(raw, list) or len(raw) != prompt_count:
        raise ValueError(f"'clicks' must be a list with one list of clicks per prompt ({prompt_count}), "
                         f"got {str(raw)[:80]}")
    parsed = []
    for p, clicks in enumerate(raw):
        if not isinstance(clicks, list):
            raise ValueError(f"clicks[{p}] must be a list of clicks for prompt {p + 1}, got {str(clicks)[:80]}")
        parsed.append([_parse_one(c, f"clicks[{p}][{i}]") for i, c in enumerate(clicks)])
    total = sum(len(c) for c in parsed)
    if total > MAX_CLICKS:
        raise ValueError(f"at most {MAX_CLICKS} clicks fit one request, got {total}")
    return parsed


def _view_index(click: RequestClick, volume: sitk.Image, dimension: int) -> np.ndarray:
    """The click's continuous numpy (K, J, I) index in the 3D volume."""
    if click.kind == "pixel":
        if dimension != 2:
            raise BadInputError("a 'pixel' click needs a 2D image; give clicks on a volume as 'ras' points")
        column, row = click.point
        return np.array([0.0, row, column])
    r, a, s = click.point
    i, j, k = volume.TransformPhysicalPointToContinuousIndex((-r, -a, s))  # RAS -> ITK's LPS
    return np.array([k, j, i])


def locate_clicks(clicks: list[list[RequestClick]], volume: sitk.Image, dimension: int, layout: SliceLayout,
                  model_size: tuple[int, int]) -> list[dict[int, list[Click]]]:
    """Per prompt: slice index (of `layout.view`) -> its clicks at the model's input resolution.

    Args:
        clicks: from `parse_clicks`.
        volume: the 3D image (tevia.volume.geometry.as_3d of the input).
        dimension: the input's own dimension (2 or 3).
        layout: the request's slice layout.
        model_size: the model's input (H, W).

    Raises:
        BadInputError: a point outside the volume, or a pixel click on a 3D volume.
    """
    shape = np.array(volume.GetSize()[::-1])  # K, J, I
    slices, rows, columns = (int(shape[a]) for a in layout.axes)
    located: list[dict[int, list[Click]]] = []
    for p, prompt_clicks in enumerate(clicks):
        per_slice: dict[int, list[Click]] = {}
        for i, click in enumerate(prompt_clicks):
            index = _view_index(click, volume, dimension)
            s, row, column = (index[a] for a in layout.axes)
            row = rows - 1 - row if layout.flip_rows else row
            column = columns - 1 - column if layout.flip_columns else column
            slice_index = int(round(s))
            if not (0 <= slice_index < slices and -0.5 <= row <= rows - 0.5 and -0.5 <= column <= columns - 0.5):
                raise BadInputError(f"clicks[{p}][{i}] {list(click.point)} lies outside the image "
                                    f"({slices} slices of {rows} x {columns}); place clicks on the image")
            model_row, model_column = to_model_size(row, column, (rows, columns), model_size)
            per_slice.setdefault(slice_index, []).append(Click(model_row, model_column, click.positive))
        located.append(per_slice)
    return located


def _gather(cached: list[Any] | None, indices: list[int]) -> list[Any] | None:
    """The cached features of the slices ``indices`` as one chunk (None without a cache)."""
    if cached is None:
        return None
    offsets = np.cumsum([0] + [len(c) for c in cached])
    parts = []
    for index in indices:
        chunk = int(np.searchsorted(offsets, index, side="right")) - 1
        parts.append(cached[chunk][index - int(offsets[chunk])])
    return [type(parts[0]).cat(parts)]


def refine_clicked(run: Any, located: list[dict[int, list[Any]]], cached: list[Any] | None,
                    labels: np.ndarray) -> list[int]:
    """Segments only the slices that carry clicks into ``labels`` (the labelmap's slice view), with
    a `tevia.inference.pipeline` run over all slices (from its cached features when there are some);
    returns their indices."""
    indices = sorted({s for per_slice in located for s in per_slice})
    run.slices = run.slices[indices]
    run.labels = np.zeros((len(indices), *labels.shape[1:]), dtype=np.uint8)
    run.clicks = [[per_slice.get(s, []) for s in indices] for per_slice in located]
    domain, run.domain = run.domain, copy.copy(run.domain)  # scores the refined slices only, by local index
    run.domain.scores = np.full(len(indices), np.nan, dtype=np.float32)
    run.run(_gather(cached, indices), 0)
    labels[indices] = run.labels
    domain.scores[indices] = run.domain.scores
    return indices
