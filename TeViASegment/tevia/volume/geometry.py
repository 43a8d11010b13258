"""Image geometry: IJK-to-RAS/LPS matrices, images from raw voxels, and slice layouts.

ITK stores physical points in LPS; Slicer and the worker protocol use RAS. The two differ by
``diag(-1, -1, 1)`` on the first two world axes. Numpy arrays are indexed K, J, I (the reverse of
ITK's I, J, K index order).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = [
    "LPS_TO_RAS",
    "SLICE_AXES",
    "SliceLayout",
    "ijk_to_lps",
    "ijk_to_ras",
    "image_from_array",
    "same_geometry",
    "slice_layout",
    "as_3d",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 matrix turning LPS points into RAS points (its own inverse)."""

# For each slice axis: (normal world axis, (column world axis, sign), (row world axis, sign)) in
# LPS, giving the display Slicer's slice views use: axial and coronal with the patient's right on
# the image's left (columns run to +L), axial with anterior at the top (rows run to +P), coronal and
# sagittal with superior at the top (rows run to -S), sagittal with anterior on the left (+P).
_DISPLAY = {
    "axial": (2, (0, 1.0), (1, 1.0)),
    "coronal": (1, (0, 1.0), (2, -1.0)),
    "sagittal": (0, (1, 1.0), (2, -1.0)),
}
SLICE_AXES = tuple(_DISPLAY)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix from a 3D image's (i, j, k) index to its LPS physical point."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix from a 3D image's (i, j, k) index to RAS (Slicer's IJKToRAS)."""
    return LPS_TO_RAS @ ijk_to_lps(image)


def image_from_array(array_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> sitk.Image:
    """Build a 3D ITK image from numpy K, J, I voxels and an IJK-to-RAS matrix.

    Args:
        array_kji: Voxels, shape (K, J, I), any numeric dtype.
        ijk_to_ras_matrix: 4x4 (or 3x4) affine from (i, j, k) to RAS millimetres.

    Returns:
        An image whose spacing, origin and direction reproduce the matrix in ITK's LPS frame.

    Raises:
        ValueError: the array is not 3D, or the matrix is not 4x4 finite with independent axes.
    """
    array_kji = np.asarray(array_kji)
    if array_kji.ndim != 3:
        raise ValueError(f"array_kji must be 3D (K, J, I), got shape {array_kji.shape}")
    matrix = np.asarray(ijk_to_ras_matrix, dtype=float)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"ijk_to_ras must be a finite 4x4 matrix, got {matrix.tolist()!r}")
    lps = LPS_TO_RAS @ matrix
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(columns)) < 1e-12 * float(np.prod(spacing)):
        raise ValueError(f"ijk_to_ras has a zero-length or dependent axis: {matrix.tolist()!r}")
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((columns / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def as_3d(image: sitk.Image) -> sitk.Image:
    """A 2D image as a one-slice 3D image (same pixels, direction embedded); 3D passes through."""
    if image.GetDimension() == 3:
        return image
    if image.GetDimension() != 2:
        raise ValueError(f"image must be 2D or 3D, got {image.GetDimension()}D")
    volume = sitk.JoinSeries(image)
    direction = np.eye(3)
    direction[:2, :2] = np.asarray(image.GetDirection(), dtype=float).reshape(2, 2)
    volume.SetDirection(direction.flatten().tolist())
    volume.SetOrigin((*image.GetOrigin(), 0.0))
    volume.SetSpacing((*image.GetSpacing(), 1.0))
    return volume


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-5) -> bool:
    """True when two images have the same size and (within tolerance) spacing, origin, direction."""
    if a.GetSize() != b.GetSize():
        return False
    pairs = [(a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()),
             (a.GetDirection(), b.GetDirection())]
    return all(np.allclose(x, y, rtol=0, atol=tolerance) for x, y in pairs)


@dataclass(frozen=True)
class SliceLayout:
    """How to read display-oriented 2D slices out of a numpy K, J, I array (and write them back).

    Attributes:
        axes: Numpy axes (slice, row, column) of the K, J, I array.
        flip_rows: Reverse the row axis so rows run in the display's direction.
        flip_columns: Reverse the column axis likewise.
        column_direction_ras: RAS unit vector of increasing column index of the displayed slice.
    """

    axes: tuple[int, int, int]
    flip_rows: bool
    flip_columns: bool
    column_direction_ras: tuple[float, float, float]

    def view(self, array_kji: np.ndarray) -> np.ndarray:
        """A (slices, rows, columns) view of ``array_kji``; writing into it writes the array."""
        view = np.transpose(array_kji, self.axes)
        return view[:, ::-1 if self.flip_rows else 1, ::-1 if self.flip_columns else 1]


def _axis_assignment(direction: np.ndarray) -> dict[int, int]:
    """World axis (LPS 0, 1, 2) -> ITK index axis, maximising alignment over permutations."""
    best = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(direction[w, p[w]]) for w in range(3)))
    return {world: best[world] for world in range(3)}


def slice_layout(image: sitk.Image, slice_axis: str) -> SliceLayout:
    """The layout of display-oriented slices of a 3D image along an anatomical axis.

    The axis is read from the image's direction matrix, so "axial" slices are perpendicular to
    the patient's superior-inferior axis whatever the voxel order on disk. An image with a single
    slice along one index axis (a 2D image) is always cut along that axis.

    Args:
        image: 3D image (use :func:`as_3d` for 2D images).
        slice_axis: "axial", "coronal" or "sagittal".

    Returns:
        The :class:`SliceLayout`.
    """
    if slice_axis not in _DISPLAY:
        raise ValueError(f"slice_axis must be one of {', '.join(SLICE_AXES)}, got {slice_axis!r}")
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    index_of_world = _axis_assignment(direction)
    world_of_index = {index: world for world, index in index_of_world.items()}
    single = [axis for axis, size in enumerate(image.GetSize()) if size == 1]
    if len(single) == 1 and index_of_world[_DISPLAY[slice_axis][0]] != single[0]:
        slice_axis = next(name for name, spec in _DISPLAY.items()
                          if spec[0] == world_of_index[single[0]])
    normal, (col_world, col_sign), (row_world, row_sign) = _DISPLAY[slice_axis]
    slice_index, row_index, col_index = (index_of_world[w] for w in (normal, row_world, col_world))
    flip_rows = bool(np.sign(direction[row_world, row_index]) != row_sign)
    flip_columns = bool(np.sign(direction[col_world, col_index]) != col_sign)
    column_lps = direction[:, col_index] * (-1.0 if flip_columns else 1.0)
    column_ras = (LPS_TO_RAS[:3, :3] @ column_lps).tolist()
    return SliceLayout(
        axes=(2 - slice_index, 2 - row_index, 2 - col_index),
        flip_rows=flip_rows,
        flip_columns=flip_columns,
        column_direction_ras=(float(column_ras[0]), float(column_ras[1]), float(column_ras[2])),
    )
