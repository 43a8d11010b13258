"""Where an imported segment lands: parent transforms and the subject hierarchy (real MRML scenes)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
import vtk.util.numpy_support
from conftest import TESTDATA
from slicer_fixtures import load_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import scene

CT = TESTDATA / "volumes" / "totalseg-ct.nii.gz"


def _numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _linear_transform(slicer_scene, angle_deg: float, axis, translation):
    transform = vtk.vtkTransform()
    transform.Translate(*translation)
    transform.RotateWXYZ(angle_deg, *axis)
    node = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def _to_world(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    parent = node.GetParentTransformNode()
    if parent is not None:
        parent.GetMatrixTransformToWorld(matrix)
    return _numpy(matrix)


def _segment_world_points(segmentation_node, segment_id) -> np.ndarray:
    """World RAS (N, 3) of the voxels of a segment, from the segmentation's own labelmap."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    voxels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    k, j, i = np.nonzero(voxels == segment.GetLabelValue())
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)]).astype(float)
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    return (_to_world(segmentation_node) @ _numpy(image_to_world) @ ijk)[:3].T


def _expected_world_points(volume, mask_kji) -> np.ndarray:
    k, j, i = np.nonzero(mask_kji)
    ijk = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    return (_to_world(volume) @ scene.ijk_to_ras(volume) @ ijk)[:3].T


def _mask(volume) -> np.ndarray:
    mask = np.zeros(scene.volume_arrays(volume)[0].shape, np.uint8)
    mask[10:16, 30:50, 40:70] = 1
    return mask


TRANSFORMS = [(0.0, (0, 0, 1), (25.0, -40.0, 12.0)), (30.0, (0, 0, 1), (0.0, 0.0, 0.0)),
              (35.0, (1, 1, 0), (-20.0, 15.0, 60.0))]


@pytest.mark.parametrize("angle,axis,translation", TRANSFORMS)
def test_new_segmentation_under_the_volumes_transform_has_the_volumes_geometry(slicer_scene, angle, axis, translation):
    """The reference geometry (Segment Editor's grid, labelmap export) is the volume's own
    IJK-to-RAS in the shared parent frame, not transformed a second time."""
    volume = load_volume(CT)
    volume.SetAndObserveTransformNodeID(_linear_transform(slicer_scene, angle, axis, translation).GetID())
    mask = _mask(volume)
    node, (segment_id,) = scene.import_labelmap(mask, {1: "liver lesion"}, volume)
    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        node.GetSegmentation().GetConversionParameter("Reference image geometry"), reference, False)
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(_numpy(matrix), scene.ijk_to_ras(volume), atol=1e-6)
    np.testing.assert_allclose(np.sort(_segment_world_points(node, segment_id), axis=0),
                               np.sort(_expected_world_points(volume, mask), axis=0), atol=1e-4)


@pytest.mark.parametrize("angle,axis,translation", TRANSFORMS)
@pytest.mark.parametrize("segmentation_transformed", [False, True])
def test_existing_segmentation_under_another_transform_gets_the_mask_in_place(
        slicer_scene, angle, axis, translation, segmentation_transformed):
    """The segment lands where the volume's voxels are in the world, whatever transform the
    segmentation is under (none, or another one)."""
    volume = load_volume(CT)
    existing = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    existing.CreateDefaultDisplayNodes()
    if segmentation_transformed:
        existing.SetAndObserveTransformNodeID(_linear_transform(slicer_scene, -20, (0, 1, 0), (5, 5, -30)).GetID())
    existing.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    volume.SetAndObserveTransformNodeID(_linear_transform(slicer_scene, angle, axis, translation).GetID())
    mask = _mask(volume)
    node, (segment_id,) = scene.import_labelmap(mask, {1: "liver lesion"}, volume, existing)
    assert node is existing
    got, expected = _segment_world_points(node, segment_id), _expected_world_points(volume, mask)
    spacing = np.array(volume.GetSpacing())
    np.testing.assert_allclose(got.mean(axis=0), expected.mean(axis=0), atol=spacing.max() / 2)
    np.testing.assert_allclose(got.min(axis=0), expected.min(axis=0), atol=spacing.max() * 1.5)
    np.testing.assert_allclose(got.max(axis=0), expected.max(axis=0), atol=spacing.max() * 1.5)


def test_new_segmentation_goes_under_the_volumes_study(slicer_scene):
    """DICOM SEG export needs the segmentation in the patient/study of its volume."""
    volume = load_volume(CT)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    hierarchy.CreateItem(study, volume)  # as Slicer's DICOM import places a volume
    node, _ = scene.import_labelmap(_mask(volume), {1: "liver"}, volume)
    assert hierarchy.GetItemByDataNode(node)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert hierarchy.GetItemLevel(study) == "Study"


def test_existing_segmentation_stays_where_the_user_put_it(slicer_scene):
    volume = load_volume(CT)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "P"), "S")
    hierarchy.CreateItem(study, volume)
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "my segmentations")
    existing = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    hierarchy.CreateItem(folder, existing)
    scene.import_labelmap(_mask(volume), {1: "liver"}, volume, existing)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(existing)) == folder


def test_a_cropped_labelmap_lands_where_the_whole_one_does(slicer_scene):
    """The worker's cropped answer (a block and its origin) gives the same segment voxels as the whole labelmap,
    under a rotated parent transform; two labels in one block each get their own segment."""
    volume = load_volume(CT, "ct")
    volume.SetAndObserveTransformNodeID(_linear_transform(slicer_scene, 35.0, (1, 1, 0), (-20.0, 15.0, 60.0)).GetID())
    whole = _mask(volume)
    whole[12:14, 55:60, 80:90] = 2
    from tevia.volume.bounds import nonzero_bounds

    bounds = nonzero_bounds(whole)
    block = whole[tuple(slice(a, b) for a, b in bounds)]
    assert block.shape == (6, 30, 50)
    labels = {1: "liver lesion", 2: "spleen"}
    full_node, full_ids = scene.import_labelmap(whole, labels, volume)
    crop_node, crop_ids = scene.import_labelmap(block, labels, volume, origin=tuple(a for a, _ in bounds))
    for value, full_id, crop_id in zip(labels, full_ids, crop_ids):
        expected = _expected_world_points(volume, whole == value)
        assert np.allclose(_segment_world_points(crop_node, crop_id), expected, atol=1e-3)
        assert np.allclose(_segment_world_points(full_node, full_id), expected, atol=1e-3)


@pytest.mark.parametrize("origin", [(0, 0, -1), (1000, 0, 0), (0, 0)])
def test_a_block_outside_the_volume_is_refused_and_nothing_is_added(slicer_scene, origin):
    volume = load_volume(CT, "ct")
    existing = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="does not lie inside the volume's grid"):
        scene.import_labelmap(np.ones((2, 3, 4), np.uint8), {1: "liver"}, volume, existing, origin=origin)
    assert existing.GetSegmentation().GetNumberOfSegments() == 0
    with pytest.raises(ValueError, match="expected the volume's"):
        scene.import_labelmap(np.ones((2, 3, 4), np.uint8), {1: "liver"}, volume, existing)
