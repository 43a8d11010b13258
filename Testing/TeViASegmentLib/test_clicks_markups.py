"""Click lists, Place mode and the slice a point lies on (real MRML scenes from slicer-core, no worker)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
from slicer_fixtures import oblique_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import clicks, scene
from tevia.volume.clicks import locate_clicks, parse_clicks
from tevia.volume.geometry import image_from_array, slice_layout


def _segmented(volume):
    labels = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)
    labels[:, 20:60, 30:80] = 1
    node, (segment,) = scene.import_labelmap(labels, {1: "lung"}, volume)
    return node, segment


def test_each_segment_gets_a_green_and_a_red_list_found_again_by_its_attributes(slicer_scene):
    volume = oblique_volume()
    node, segment = _segmented(volume)
    positive, negative = clicks.click_lists(node, segment)
    assert clicks.click_lists(node, segment) == (positive, negative), "the lists are found, not made again"
    assert positive.GetName() == "lung clicks +" and negative.GetName() == "lung clicks -"
    assert positive.GetDisplayNode().GetSelectedColor() == pytest.approx(clicks.POSITIVE_COLOR)
    assert negative.GetDisplayNode().GetColor() == pytest.approx(clicks.NEGATIVE_COLOR)
    assert negative.GetAttribute(clicks.SEGMENT_ATTRIBUTE) == segment
    assert negative.GetAttribute(clicks.POSITIVE_ATTRIBUTE) == "0"
    with pytest.raises(ValueError, match="is not in segmentation"):
        clicks.click_lists(node, "no such segment")


def test_place_mode_goes_to_the_chosen_list_and_back(slicer_scene):
    volume = oblique_volume()
    positive, negative = clicks.click_lists(*_segmented(volume))
    app_logic = slicer.modules.volumes.logic().GetMRMLApplicationLogic()
    assert clicks.placing(app_logic) is None
    clicks.start_placement(app_logic, negative)
    interaction = app_logic.GetInteractionNode()
    assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence()
    assert app_logic.GetSelectionNode().GetActivePlaceNodeID() == negative.GetID()
    assert clicks.placing(app_logic) is False
    clicks.start_placement(app_logic, positive)
    assert clicks.placing(app_logic) is True
    clicks.stop_placement(app_logic)
    assert clicks.placing(app_logic) is None and interaction.GetCurrentInteractionMode() == interaction.ViewTransform


@pytest.mark.parametrize("slice_axis", ["axial", "coronal", "sagittal"])
def test_a_point_lies_on_the_slice_the_worker_gives_it(slicer_scene, slice_axis):
    """The client's slice for a RAS point is the engine's (tevia.volume.clicks.locate_clicks), on
    the CT under a permuted, rotated direction matrix."""
    volume = oblique_volume()
    matrix = scene.ijk_to_ras(volume)
    voxels = slicer.util.arrayFromVolume(volume)
    image = image_from_array(np.zeros(voxels.shape, np.uint8), matrix)
    layout = slice_layout(image, slice_axis)
    rng = np.random.default_rng(0)
    for i, j, k in rng.uniform(0, 1, (20, 3)) * (np.array(voxels.shape[::-1]) - 1):
        ras = tuple((matrix @ [i, j, k, 1.0])[:3])
        location = clicks.locate_click(volume, ras, slice_axis)
        engine = locate_clicks(parse_clicks([[{"ras": list(ras), "positive": True}]], 1), image, 3, layout, (64, 64))
        assert location.refined_axis == 2 - layout.axes[0] and list(engine[0]) == [location.index]
    assert clicks.locate_click(volume, tuple((matrix @ [5, 7, 9, 1.0])[:3])) == clicks.SliceLocation(0, 5)


def test_a_point_off_the_volume_is_refused_with_where_it_is(slicer_scene):
    volume = oblique_volume()
    matrix = scene.ijk_to_ras(volume)
    with pytest.raises(ValueError, match=r"lies outside volume 'volume' \(voxel index I, J, K = -3.0, 7.0, 9.0; "
                                         r"size 122 x 101 x 30\): place clicks on the image"):
        clicks.locate_click(volume, tuple((matrix @ [-3, 7, 9, 1.0])[:3]))


def test_points_are_sent_in_the_volumes_own_frame_under_a_parent_transform(slicer_scene):
    volume = oblique_volume()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = np.eye(4)
    moved[:3, 3] = (10.0, -20.0, 30.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(moved))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    positive, _ = clicks.click_lists(*_segmented(volume))
    local = (1.0, 2.0, 3.0)
    positive.AddControlPointWorld(11.0, -18.0, 33.0)
    (placed,) = clicks.placed_clicks(positive, volume)
    assert placed.ras == pytest.approx(local)
    assert placed.request() == {"ras": pytest.approx(list(local)), "positive": True}
