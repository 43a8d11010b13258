"""Scene <-> arrays on real MRML scenes (slicer-core) with real volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
import vtk
from conftest import shared_path
from slicer_fixtures import load_volume, scene_snapshot, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import scene, terminology

VOLUMES = [("spleen-ct", "ct.nii.gz"), ("spinalcord-t2-mri", "t2.nii.gz")]


@pytest.mark.parametrize("folder,name", VOLUMES)
def test_volume_arrays_match_simpleitk(slicer_scene, folder, name):
    """Each voxel (K, J, I) sits at ijk_to_ras @ (I, J, K, 1), where SimpleITK finds the same value."""
    path = shared_path("volumes", folder, name)
    voxels, ijk_to_ras = scene.volume_arrays(load_volume(path))
    image = sitk.ReadImage(str(path))
    reference = sitk.GetArrayFromImage(image)
    assert voxels.shape == reference.shape == tuple(reversed(image.GetSize()))
    rng = np.random.default_rng(0)
    for k, j, i in zip(*(rng.integers(0, n, 200) for n in voxels.shape)):
        ras = ijk_to_ras @ np.array([i, j, k, 1.0])
        lps = (-ras[0], -ras[1], ras[2])
        index = image.TransformPhysicalPointToIndex(lps)
        assert voxels[k, j, i] == reference[index[2], index[1], index[0]]


def test_write_worker_input_round_trips(slicer_scene, tmp_path):
    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"))
    paths = scene.write_worker_input(volume, tmp_path)
    geometry = json.loads(open(paths["geometry"]).read())
    voxels, ijk_to_ras = scene.volume_arrays(volume)
    np.testing.assert_array_equal(np.load(paths["npy"]), voxels)
    assert geometry["shape_kji"] == list(voxels.shape)
    np.testing.assert_allclose(geometry["ijk_to_ras"], ijk_to_ras)


def test_volume_arrays_copies_unless_told_not_to(slicer_scene):
    """The default copy is the caller's own; copy=False is a read-only view of the node's voxels
    (what the worker-input export writes at once, without a second copy of a large volume)."""
    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"))
    node_voxels = slicer.util.arrayFromVolume(volume)
    copied, _ = scene.volume_arrays(volume)
    view, _ = scene.volume_arrays(volume, copy=False)
    assert not np.shares_memory(copied, node_voxels) and copied.flags.writeable
    assert np.shares_memory(view, node_voxels) and not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0, 0] = 1
    np.testing.assert_array_equal(copied, view)


@pytest.mark.parametrize("folder,name", VOLUMES)
def test_import_creates_named_segments_with_the_volume_geometry(slicer_scene, folder, name):
    volume = load_volume(shared_path("volumes", folder, name))
    voxels, _ = scene.volume_arrays(volume)
    labelmap = np.zeros(voxels.shape, np.uint8)
    labelmap[2:5, 10:20, 5:15] = 1
    labelmap[6:8, 1:4, 1:3] = 2
    node, ids = scene.import_labelmap(labelmap, {1: "lower left lung infection", 2: "spleen"}, volume)
    assert [node.GetSegmentation().GetSegment(i).GetName() for i in ids] == ["lower left lung infection", "spleen"]
    assert scene.segment_prompt(node.GetSegmentation().GetSegment(ids[0])) == "lower left lung infection"
    for value, segment_id in zip((1, 2), ids):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
        np.testing.assert_array_equal(mask.astype(bool), labelmap == value)
    reference = slicer.vtkOrientedImageData()
    segmentation_geometry = node.GetSegmentation().GetConversionParameter("Reference image geometry")
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(segmentation_geometry, reference, False)
    expected, got = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(expected)
    reference.GetImageToWorldMatrix(got)
    np.testing.assert_allclose([[got.GetElement(r, c) for c in range(4)] for r in range(4)],
                               [[expected.GetElement(r, c) for c in range(4)] for r in range(4)], atol=1e-5)
    assert reference.GetDimensions() == volume.GetImageData().GetDimensions()


def test_one_label_imports_only_its_own_voxels(slicer_scene):
    """A 0/1 labelmap is its own mask (no copy); other values in the labelmap stay out of label 1's segment."""
    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"))
    voxels, _ = scene.volume_arrays(volume)
    labelmap = np.zeros(voxels.shape, np.uint8)
    labelmap[2:5, 10:20, 5:15] = 1
    node, (only,) = scene.import_labelmap(labelmap, {1: "spleen"}, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, only, volume), labelmap)
    labelmap[3, 12:14, 6:8] = 2
    node, (first,) = scene.import_labelmap(labelmap, {1: "liver"}, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, first, volume), labelmap == 1)


def test_masks_at_the_volume_corners_and_single_voxels_are_imported_exactly(slicer_scene):
    """Each mask goes to Slicer cropped to its bounding box: the crop keeps the voxel indices."""
    volume = load_volume(shared_path("volumes", "spleen-ct", "ct.nii.gz"))
    shape = slicer.util.arrayFromVolume(volume).shape
    labelmap = np.zeros(shape, np.uint8)
    labelmap[0, 0, 0] = labelmap[-1, -1, -1] = 1  # its box is the whole volume
    labelmap[3, 7, 11] = 2
    labelmap[-2:, 5, -3:] = 3
    node, ids = scene.import_labelmap(labelmap, {1: "corners", 2: "one voxel", 3: "edge"}, volume)
    for value, segment_id in zip((1, 2, 3), ids):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
        np.testing.assert_array_equal(mask.astype(bool), labelmap == value)


def test_existing_segments_are_never_changed(slicer_scene):
    volume = load_volume(shared_path("volumes", "spleen-ct", "ct.nii.gz"))
    voxels, _ = scene.volume_arrays(volume)
    mine = np.zeros(voxels.shape, np.uint8)
    mine[5:10, 20:60, 20:60] = 1
    node, (mine_id,) = scene.import_labelmap(mine, {1: "my edit"}, volume)
    color_before = node.GetSegmentation().GetSegment(mine_id).GetColor()
    overlapping = np.zeros(voxels.shape, np.uint8)
    overlapping[7:12, 40:80, 40:80] = 1
    same_node, ids = scene.import_labelmap(overlapping, {1: "my edit"}, volume, node)
    assert same_node is node and len(ids) == 1 and ids[0] != mine_id
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, mine_id, volume), mine)
    assert node.GetSegmentation().GetSegment(mine_id).GetName() == "my edit"
    assert node.GetSegmentation().GetSegment(mine_id).GetColor() == color_before
    assert node.GetSegmentation().GetSegment(ids[0]).GetName() == "my edit (2)"


def test_bad_labelmap_leaves_the_scene_unchanged(slicer_scene):
    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"))
    before = scene_snapshot(slicer_scene)
    with pytest.raises(ValueError, match="labelmap_kji has shape"):
        scene.import_labelmap(np.zeros((2, 2, 2), np.uint8), {1: "x"}, volume)
    with pytest.raises(ValueError, match="labels must map"):
        scene.import_labelmap(np.zeros(scene.volume_arrays(volume)[0].shape, np.uint8), {}, volume)
    assert scene_snapshot(slicer_scene) == before


def test_failure_midway_removes_what_was_added(slicer_scene, monkeypatch):
    volume = load_volume(shared_path("volumes", "spinalcord-t2-mri", "t2.nii.gz"))
    labelmap = np.ones(scene.volume_arrays(volume)[0].shape, np.uint8)
    existing, _ = scene.import_labelmap(labelmap, {1: "kept"}, volume)
    before = scene_snapshot(slicer_scene)
    calls = []

    def failing_coding(prompt, logic=None, mirror_sides=False):
        calls.append(prompt)
        if len(calls) == 2:
            raise RuntimeError("terminology failure")
        return terminology.SegmentCoding(None, terminology.NEUTRAL_COLOR, "none")

    monkeypatch.setattr(terminology, "code_prompt", failing_coding)
    labelmap[0] = 2
    for target in (existing, None):
        calls.clear()
        with pytest.raises(RuntimeError, match="terminology failure"):
            scene.import_labelmap(labelmap, {1: "a", 2: "b"}, volume, target)
        assert scene_snapshot(slicer_scene) == before


def test_segment_names_are_shortened_at_word_boundaries():
    assert scene.segment_name("  liver  ") == "liver"
    long = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
    name = scene.segment_name(long)
    assert len(name) <= scene.MAX_SEGMENT_NAME_CHARS and name.endswith("…")
    assert long.startswith(name[:-1]) and not name[:-1].endswith(" ")
    with pytest.raises(ValueError, match="prompt must contain text"):
        scene.segment_name("   ")
