"""The options of a segmentation run (``tevia.inference.pipeline.segment_volume``), checked on construction:
every front end (worker, server, ``tevia predict``) builds them from its own input and gets the
same errors for bad values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tevia.prompts import CONVENTIONS
from tevia.volume.geometry import SLICE_AXES
from tevia.volume.preprocess import parse_window

__all__ = ["SegmentOptions"]

_MAX_BATCH = 4096
_MAX_MIN_SIZE = 2**31 - 1


def _shown(value: Any) -> str:
    """A value for an error message, cut to 60 characters (options may come from anyone)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class SegmentOptions:
    """Options of :func:`segment_volume` (validated on construction).

    Attributes:
        slice_axis: "axial", "coronal" or "sagittal", in the image's own anatomy (its direction
            matrix). A 2D image (or a volume with one slice) is always its own single slice.
        threshold: Probability above which a voxel is foreground, in (0, 1).
        batch_size: Most slices per model call; smaller batches are used when a batch would take
            longer than :data:`tevia.inference.pipeline.STEP_SECONDS`, and on out-of-memory.
        window: None for percentile scaling (8-bit images: /255, other 2D images: min-max, as in
            training), a CT window name (see
            ``tevia.volume.preprocess.WINDOWS``) or (center, width).
        largest_component: Keep only the largest 3D connected component of each label.
        fill_holes: Fill in-plane holes of each label.
        min_size: Drop connected components smaller than this many voxels.
        convention: Side convention of the prompts, "patient" or "image" (see tevia.prompts).
    """

    slice_axis: str = "axial"
    threshold: float = 0.5
    batch_size: int = 16
    window: str | tuple[float, float] | None = None
    largest_component: bool = False
    fill_holes: bool = False
    min_size: int = 0
    convention: str = "patient"

    def __post_init__(self) -> None:
        if not isinstance(self.slice_axis, str) or self.slice_axis not in SLICE_AXES:
            raise ValueError(f"slice_axis must be one of {', '.join(SLICE_AXES)}, got {_shown(self.slice_axis)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be a number between 0 and 1 (exclusive), got {_shown(self.threshold)}")
        for name, low, high in (("batch_size", 1, _MAX_BATCH), ("min_size", 0, _MAX_MIN_SIZE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {_shown(value)}")
        for name in ("largest_component", "fill_holes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {_shown(getattr(self, name))}")
        if isinstance(self.window, list):
            self.window = tuple(self.window)
        parse_window(self.window)
        if not isinstance(self.convention, str) or self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be 'patient' or 'image', got {_shown(self.convention)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "SegmentOptions":
        """Options from a JSON-like dict; unknown keys or bad values raise ``ValueError`` naming them."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return dataclasses.asdict(self)
