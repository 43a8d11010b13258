"""The remote client fed exactly what Slicer gives it: a slicer-core volume node's
arrayFromVolume (K, J, I) and IJK-to-RAS matrix, read by Slicer's own NIfTI reader."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk

from server_helpers import TOKEN, cropped_volume, module_server, segmenter  # noqa: F401 (fixtures)

from TeViASegmentLib.remote_client import RemoteClient
from tevia.inference.pipeline import SegmentOptions, segment_volume

OPTIONS = {"threshold": 0.3, "batch_size": 1}  # batch_size 1: see test_remote_client


def slicer_volume(path) -> tuple[np.ndarray, np.ndarray]:
    """(arrayFromVolume, IJK-to-RAS) of the file as Slicer's volume storage node reads it."""
    import slicer.util

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVolume(node).copy(), slicer.util.arrayFromVTKMatrix(matrix)


def test_slicer_node_round_trip_matches_the_pipeline_in_slicer_voxel_order(module_server, segmenter, tmp_path):
    # The spinal-cord MRI has a left-handed direction (PSR); Slicer's reader stores it with the
    # K axis reversed to stay right-handed, so Slicer's array is ITK's flipped along K.
    image = cropped_volume("spinalcord-t2.nii.gz")
    path = tmp_path / "t2.nii.gz"
    sitk.WriteImage(image, str(path))
    volume_kji, ijk_to_ras = slicer_volume(path)
    itk_kji = sitk.GetArrayFromImage(image)
    assert np.array_equal(volume_kji, itk_kji[::-1]) and not np.array_equal(volume_kji, itk_kji)

    labelmap, labels, _ = RemoteClient(module_server.url, TOKEN).segment(
        volume_kji, ijk_to_ras, ["spinal cord", "csf"], OPTIONS)

    local = sitk.GetArrayFromImage(segment_volume(segmenter, image, ["spinal cord", "csf"],
                                                  SegmentOptions.from_dict(OPTIONS)).labelmap)
    assert labels == {1: "spinal cord", 2: "csf"}
    assert labelmap.shape == volume_kji.shape
    assert not np.array_equal(local, local[::-1])
    np.testing.assert_array_equal(labelmap, local[::-1])
