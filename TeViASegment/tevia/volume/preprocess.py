"""Intensity scaling of volume slices to the model's [0, 1] input range (CT windows or percentiles).

The model was trained on 8-bit images divided by 255 (16-bit and float images min-max scaled
first), so 8-bit inputs are divided by 255 too and other 2D images are min-max scaled. Volumes
are scaled by a CT window (center, width in Hounsfield units) when one is given, else between
their 0.5th and 99.5th percentiles (computed once per volume on a subsample, so slices can be
scaled batch by batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tevia.volume.errors import BadInputError

__all__ = ["WINDOWS", "PERCENTILES", "IntensityScaler", "parse_window"]

WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft-tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
"""Named CT windows: name -> (center, width) in Hounsfield units."""

PERCENTILES = (0.5, 99.5)
_SAMPLE_VOXELS = 2_000_000


def parse_window(window: str | tuple[float, float] | list[float] | None) -> tuple[float, float] | None:
    """Turn a window option into (center, width), or None for percentile scaling.

    Accepts a name from :data:`WINDOWS`, a (center, width) pair, or a "center,width" string.

    Raises:
        ValueError: an unknown name, a malformed pair, or a width that is not positive.
    """
    if window is None:
        return None
    if isinstance(window, str):
        if window.lower() in WINDOWS:
            return WINDOWS[window.lower()]
        parts = window.split(",")
        if len(parts) != 2:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)} or 'center,width', got {window!r}")
        window = parts
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as error:
        raise ValueError(f"window must be a name or (center, width) numbers, got {window!r}") from error
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ValueError(f"window width must be a positive number and center finite, got {window!r}")
    return center, width


@dataclass(frozen=True)
class IntensityScaler:
    """Maps raw voxel values to [0, 1]: ``clip((x - low) / (high - low), 0, 1)``.

    Attributes:
        low: Value mapped to 0 (also replaces NaN and -Inf voxels).
        high: Value mapped to 1 (also replaces +Inf voxels).
        constant: True when the volume holds a single value: nothing to segment.
    """

    low: float
    high: float
    constant: bool = False

    @classmethod
    def from_volume(cls, array: np.ndarray, window: str | tuple[float, float] | None = None,
                    percentiles: tuple[float, float] = PERCENTILES) -> tuple["IntensityScaler", list[str]]:
        """Choose the scaling for a whole volume.

        Args:
            array: Voxels, numpy K, J, I (any shape, any numeric dtype).
            window: See :func:`parse_window`.
            percentiles: Values mapped to 0 and 1 without a window (non-8-bit data); (0, 100) is
                the min-max scaling training applies to 16-bit and float 2D images.

        Returns:
            (scaler, warnings): warnings report non-finite voxels and constant volumes.

        Raises:
            BadInputError: every voxel is NaN or infinite.
        """
        warnings: list[str] = []
        flat = array.reshape(-1)
        if flat.dtype.kind == "f":
            finite = np.isfinite(flat)
            bad = int(flat.size - np.count_nonzero(finite))
            if bad == flat.size:
                raise BadInputError(f"all {flat.size} voxels are NaN or infinite: nothing to segment")
            if bad:
                warnings.append(f"{bad} voxels are NaN or infinite: treated as the lowest intensity")
                flat = flat[finite]
        minimum, maximum = float(flat.min()), float(flat.max())
        if minimum == maximum:
            warnings.append(f"the volume is constant (every voxel is {minimum:g}): nothing to segment")
            return cls(minimum, maximum + 1.0, constant=True), warnings
        center_width = parse_window(window)
        if center_width is not None:
            center, width = center_width
            return cls(center - width / 2, center + width / 2), warnings
        if array.dtype == np.uint8:
            return cls(0.0, 255.0), warnings
        if tuple(percentiles) == (0.0, 100.0):
            return cls(minimum, maximum), warnings
        sample = flat[:: max(1, flat.size // _SAMPLE_VOXELS)]
        low, high = (float(v) for v in np.percentile(sample, percentiles))
        if high <= low:
            low, high = minimum, maximum
        return cls(low, high), warnings

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """Scale raw slices (any shape) to float32 in [0, 1], non-finite values replaced."""
        values = np.asarray(slices, dtype=np.float32)
        if values.dtype.kind == "f":
            values = np.nan_to_num(values, nan=self.low, posinf=self.high, neginf=self.low)
        scaled = (values - np.float32(self.low)) / np.float32(self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled)
