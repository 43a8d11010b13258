"""The kept worker input of each volume node (real slicer-core scenes, real volumes): exported
once, exported again whenever the voxels or the geometry change, never otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import vtk
from conftest import shared_path
from slicer_fixtures import load_volume, slicer_scene  # noqa: F401 (fixture)

from TeViASegmentLib import scene, worker_inputs


@pytest.fixture
def volume(slicer_scene):
    return load_volume(shared_path("volumes", "spleen-ct", "ct.nii.gz"), "ct")


def _exported(source: dict) -> tuple[np.ndarray, np.ndarray]:
    geometry = json.loads(Path(source["geometry"]).read_text())
    return np.load(source["npy"]), np.array(geometry["ijk_to_ras"])


def _flip_in_place(volume):
    array = slicer.util.arrayFromVolume(volume)
    array[:] = array[:, :, ::-1].copy()
    slicer.util.arrayFromVolumeModified(volume)


def _rotate_axes(volume):
    volume.SetIJKToRASDirections([[0, 0, 1], [1, 0, 0], [0, 1, 0]])  # the slice axis is now sagittal


CHANGES = {
    "updateVolumeFromArray": lambda v: slicer.util.updateVolumeFromArray(v, slicer.util.arrayFromVolume(v) + 1),
    "arrayFromVolumeModified": _flip_in_place,
    "new image data": lambda v: v.SetAndObserveImageData(_copy_image(v.GetImageData())),
    "spacing": lambda v: v.SetSpacing(2.0, 2.0, 5.0),
    "origin": lambda v: v.SetOrigin(10.0, 0.0, 0.0),
    "axis directions": _rotate_axes,
}


def _copy_image(image):
    copy = vtk.vtkImageData()
    copy.DeepCopy(image)
    return copy


def test_an_unchanged_volume_keeps_its_export_and_key(volume):
    inputs = worker_inputs.WorkerInputs()
    source, key, exported = inputs.input_for(volume)
    assert exported
    voxels, matrix = scene.volume_arrays(volume)
    np.testing.assert_array_equal(_exported(source)[0], voxels)
    np.testing.assert_allclose(_exported(source)[1], matrix)
    slicer.util.arrayFromVolume(volume)  # reading the voxels changes nothing
    volume.SetName("renamed")
    assert inputs.input_for(volume) == (source, key, False)


def test_moving_the_volume_under_a_transform_keeps_its_export(volume, slicer_scene):
    """The worker gets the node's own IJK-to-RAS, which a parent transform does not change."""
    inputs = worker_inputs.WorkerInputs()
    source, key, _ = inputs.input_for(volume)
    transform = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert inputs.input_for(volume) == (source, key, False)


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_voxels_or_geometry_give_a_new_export_under_a_new_key(volume, change):
    inputs = worker_inputs.WorkerInputs()
    old_source, old_key, _ = inputs.input_for(volume)
    CHANGES[change](volume)
    source, key, exported = inputs.input_for(volume)
    assert exported and key != old_key
    voxels, matrix = scene.volume_arrays(volume)
    np.testing.assert_array_equal(_exported(source)[0], voxels)
    np.testing.assert_allclose(_exported(source)[1], matrix)
    assert not any(Path(path).exists() for path in old_source.values()), "the old export is removed"
    assert inputs.input_for(volume) == (source, key, False)


def test_two_nodes_with_the_same_voxels_have_their_own_exports(volume):
    inputs = worker_inputs.WorkerInputs()
    copy = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(volume), scene.ijk_to_ras(volume), "copy")
    first, second = inputs.input_for(volume), inputs.input_for(copy)
    assert first[1] != second[1] and first[0] != second[0]
    assert inputs.input_for(volume) == (first[0], first[1], False)


def test_only_the_last_nodes_keep_their_exports_and_clear_removes_all(volume, slicer_scene):
    inputs = worker_inputs.WorkerInputs(kept=2)
    voxels = slicer.util.arrayFromVolume(volume)
    nodes = [slicer.util.addVolumeFromArray(voxels + n, np.eye(4), f"v{n}") for n in range(3)]
    sources = [inputs.input_for(node)[0] for node in nodes]
    assert not Path(sources[0]["npy"]).exists() and all(Path(s["npy"]).exists() for s in sources[1:])
    assert inputs.input_for(nodes[0])[2] is True, "evicted: exported again"
    folder = Path(sources[1]["npy"]).parent
    inputs.clear()
    assert not folder.exists()
    assert inputs.input_for(nodes[1])[2] is True


def test_a_removed_export_file_is_written_again(volume):
    inputs = worker_inputs.WorkerInputs()
    source, key, _ = inputs.input_for(volume)
    Path(source["npy"]).unlink()
    again, new_key, exported = inputs.input_for(volume)
    assert exported and new_key != key and Path(again["npy"]).is_file()


def test_a_volume_that_cannot_be_segmented_is_refused_with_a_clear_error(slicer_scene):
    inputs = worker_inputs.WorkerInputs()
    labels = slicer_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labels.SetAndObserveImageData(vtk.vtkImageData())
    with pytest.raises(ValueError, match="is a label map"):
        inputs.input_for(labels)
    with pytest.raises(ValueError, match="kept must be >= 1"):
        worker_inputs.WorkerInputs(kept=0)
