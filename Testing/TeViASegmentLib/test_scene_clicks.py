"""A click result replaces one segment's voxels on its slices only (real MRML scene, slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer.util
from slicer_fixtures import oblique_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import scene, slice_edits


@pytest.mark.parametrize("refined_axis", [0, 2])
def test_a_click_result_replaces_only_its_segment_on_its_slices(slicer_scene, refined_axis):
    volume = oblique_volume()
    shape = slicer.util.arrayFromVolume(volume).shape  # K, J, I
    first = np.zeros(shape, dtype=np.uint8)
    first[:, 20:60, 30:80] = 1
    first[:, 70:90, 30:80] = 2
    node, (segment, other) = scene.import_labelmap(first, {1: "lung", 2: "liver"}, volume)
    before_other = slicer.util.arrayFromSegmentBinaryLabelmap(node, other, volume).copy()

    refined = np.zeros(shape, dtype=np.uint8)
    refined[:, 40:80, 10:50] = 1  # what the click made of the segment, on every slice (only two count)
    refined[:, 0:5, 0:5] = 2  # another label: never touches the segment
    slices = [3, 12]
    slice_edits.replace_segment_slices(refined, 1, refined_axis, slices, volume, node, segment)

    after = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment, volume).astype(bool)
    axis = 2 - refined_axis
    expected = first == 1
    index = [slice(None)] * 3
    index[axis] = slices
    expected[tuple(index)] = refined[tuple(index)] == 1
    np.testing.assert_array_equal(after, expected)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, other, volume), before_other)


def test_a_bad_click_result_changes_nothing(slicer_scene):
    volume = oblique_volume()
    shape = slicer.util.arrayFromVolume(volume).shape
    labels = np.zeros(shape, dtype=np.uint8)
    labels[:, 20:60, 30:80] = 1
    node, (segment,) = scene.import_labelmap(labels, {1: "lung"}, volume)
    with pytest.raises(ValueError, match="outside the volume's 30 slices"):
        slice_edits.replace_segment_slices(np.zeros(shape, np.uint8), 1, 2, [30], volume, node, segment)
    with pytest.raises(ValueError, match="refined_axis must be"):
        slice_edits.replace_segment_slices(np.zeros(shape, np.uint8), 1, 3, [0], volume, node, segment)
    with pytest.raises(ValueError, match="expected the volume's"):
        slice_edits.replace_segment_slices(np.zeros((1, 2, 3), np.uint8), 1, 2, [0], volume, node, segment)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, segment, volume), labels == 1)
