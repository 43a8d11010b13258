"""The bounding box of a labelmap's labelled voxels (numpy only: the Slicer side uses it too)."""

from __future__ import annotations

import numpy as np

__all__ = ["nonzero_bounds"]


def nonzero_bounds(array_kji: np.ndarray) -> tuple[tuple[int, int], ...]:
    """[start, stop) along K, J and I of the non-zero voxels of a 3D array; the first voxel when there are none.

    One pass over the whole array (which slices hold a voxel), then passes over that K range only.
    """
    if array_kji.ndim != 3:
        raise ValueError(f"expected a (K, J, I) array, got shape {array_kji.shape}")
    k = np.flatnonzero(array_kji.any(axis=(1, 2)))
    if not k.size:
        return (0, 1), (0, 1), (0, 1)
    block = array_kji[k[0]:k[-1] + 1]
    j, i = np.flatnonzero(block.any(axis=(0, 2))), np.flatnonzero(block.any(axis=(0, 1)))
    return (int(k[0]), int(k[-1]) + 1), (int(j[0]), int(j[-1]) + 1), (int(i[0]), int(i[-1]) + 1)
