"""One segment's voxels on some slices of its volume: read, set, and replaced by a click's result.

A corrective click refines the slices it lies on (tevia/PROTOCOL.md, `refined_axis` and
`refined_slices`); these functions change only those slices of only that segment, so the
user's other segments and edits elsewhere stay as they are (click_editor.py keeps the previous
slices for undo).
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util

from TeViASegmentLib import scene

__all__ = ["segment_slices", "set_segment_slices", "replace_segment_slices"]


def _slice_index(refined_axis: int, refined_slices: list[int], volume_shape: tuple[int, ...]) -> tuple:
    """The numpy index of some slices of a (K, J, I) array cut along an IJK axis, checked.

    Raises:
        ValueError: an axis not in 0..2, or a slice index outside the volume.
    """
    if refined_axis not in (0, 1, 2):
        raise ValueError(f"refined_axis must be 0 (I), 1 (J) or 2 (K), got {refined_axis!r}")
    axis = 2 - refined_axis  # numpy axis of the K, J, I array
    bad = [s for s in refined_slices if not 0 <= s < volume_shape[axis]]
    if bad:
        raise ValueError(f"refined slices {bad} lie outside the volume's {volume_shape[axis]} slices")
    index: list = [slice(None)] * 3
    index[axis] = list(refined_slices)
    return tuple(index)


def segment_slices(volume_node, segmentation_node, segment_id: str, refined_axis: int,
                   refined_slices: list[int]) -> np.ndarray:
    """A segment's voxels (bool) on some slices of its volume's grid: the (K, J, I) mask indexed
    with the slices along numpy axis 2 - refined_axis (what `set_segment_slices` writes back).

    Raises:
        ValueError: as `set_segment_slices`.
    """
    index = _slice_index(refined_axis, refined_slices, scene.volume_shape(volume_node))
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise ValueError(f"segmentId {segment_id!r} is not in segmentation {segmentation_node.GetName()!r}")
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)[index].astype(bool)


def set_segment_slices(slice_masks: np.ndarray, refined_axis: int, refined_slices: list[int], volume_node,
                       segmentation_node, segment_id: str) -> None:
    """Set one segment's voxels on some slices (as `segment_slices` gave them); its voxels on
    every other slice, and every other segment, stay as they are.

    Args:
        slice_masks: bool array, the volume's (K, J, I) shape with len(refined_slices) along
            numpy axis 2 - refined_axis.
        refined_axis: IJK axis the slices cut (0 = I, 1 = J, 2 = K).
        refined_slices: their indices along that axis.
        volume_node: the volume whose grid the masks are on.
        segmentation_node, segment_id: the segment to change.

    Raises:
        ValueError: an axis not in 0..2, a slice index outside the volume, masks of another
            shape, or a segment that is not in the segmentation (nothing is changed).
    """
    shape = scene.volume_shape(volume_node)
    index = _slice_index(refined_axis, refined_slices, shape)
    expected = list(shape)
    expected[2 - refined_axis] = len(refined_slices)
    if list(slice_masks.shape) != expected:
        raise ValueError(f"slice_masks has shape {slice_masks.shape}, expected {tuple(expected)} "
                         f"({len(refined_slices)} slices of the volume's {shape})")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise ValueError(f"segmentId {segment_id!r} is not in segmentation {segmentation_node.GetName()!r}")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node).astype(bool)
    mask[index] = slice_masks
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            scene.oriented_mask(mask, volume_node, segmentation_node), segmentation_node, segment_id):
        raise RuntimeError(f"Slicer could not set the voxels of segment {segment_id!r}")


def replace_segment_slices(labelmap_kji: np.ndarray, label: int, refined_axis: int, refined_slices: list[int],
                           volume_node, segmentation_node, segment_id: str) -> None:
    """Replace one segment's voxels on some slices with a click result's (the worker's
    `refined_axis` and `refined_slices`, tevia/PROTOCOL.md); its voxels on every other slice,
    and every other segment, stay as they are.

    Args:
        labelmap_kji: the worker's labelmap, shape (K, J, I) equal to the volume's.
        label: the segment's label value in it (its prompt's index + 1).
        refined_axis, refined_slices, volume_node, segmentation_node, segment_id: see
            `set_segment_slices`.

    Raises:
        ValueError: a shape that is not the volume's, an axis not in 0..2, a slice index outside
            the volume, or a segment that is not in the segmentation (nothing is changed).
    """
    shape = scene.volume_shape(volume_node)
    if tuple(labelmap_kji.shape) != shape:
        raise ValueError(f"labelmap_kji has shape {labelmap_kji.shape}, expected the volume's {shape}")
    index = _slice_index(refined_axis, refined_slices, shape)
    set_segment_slices(labelmap_kji[index] == label, refined_axis, refined_slices, volume_node,
                       segmentation_node, segment_id)
