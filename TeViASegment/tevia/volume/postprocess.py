"""Post-processing of binary masks with SimpleITK: largest component, hole filling, minimum size.

Masks are numpy bool/uint8 arrays in K, J, I order (3D) or (rows, columns); connectivity is
face-connected (6 in 3D, 4 in 2D).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["largest_components", "fill_holes", "remove_small", "postprocess_mask"]


def _components(mask: np.ndarray) -> sitk.Image:
    """Connected components of a mask, relabelled by decreasing size (1 = largest)."""
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False)
    return sitk.RelabelComponent(labels, sortByObjectSize=True)


def largest_components(mask: np.ndarray, count: int = 1) -> np.ndarray:
    """Keep the ``count`` largest connected components of a mask (same shape, bool)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not mask.any():
        return mask.astype(bool)
    labels = sitk.GetArrayFromImage(_components(mask))
    return (labels > 0) & (labels <= count)


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components smaller than ``min_size`` voxels (same shape, bool)."""
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if min_size <= 1 or not mask.any():
        return mask.astype(bool)
    labels = sitk.RelabelComponent(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False),
        minimumObjectSize=int(min_size))
    return sitk.GetArrayFromImage(labels) > 0


def fill_holes(slices: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (the model sees slices, so holes are judged in-plane).

    Args:
        slices: (N, rows, columns) mask, e.g. a :class:`~tevia.volume.geometry.SliceLayout` view.

    Returns:
        bool array of the same shape with every enclosed background region filled.
    """
    filled = np.empty(slices.shape, dtype=bool)
    for index, plane in enumerate(slices):
        if plane.any():
            image = sitk.BinaryFillhole(sitk.GetImageFromArray(plane.astype(np.uint8)), False, 1.0)
            filled[index] = sitk.GetArrayFromImage(image) > 0
        else:
            filled[index] = False
    return filled


def postprocess_mask(slices: np.ndarray, largest_component: bool = False, fill: bool = False,
                     min_size: int = 0) -> np.ndarray:
    """Apply the chosen steps in a fixed order: fill holes, drop small parts, keep the largest.

    Args:
        slices: (N, rows, columns) mask in display slice order.
        largest_component: Keep only the largest 3D connected component.
        fill: Fill in-plane holes.
        min_size: Drop 3D components smaller than this many voxels (0 = keep all).

    Returns:
        bool mask of the same shape.
    """
    mask = slices.astype(bool)
    if fill:
        mask = fill_holes(mask)
    if min_size:
        mask = remove_small(mask, min_size)
    if largest_component:
        mask = largest_components(mask)
    return mask
