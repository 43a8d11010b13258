"""What the page's Save buttons write: Slicer's own files, on the volume's voxel grid.

`write_seg_nrrd` writes a segmentation the way Slicer's Save dialog does (segment names,
colours, terminology and the prompt tags in the header; slicerio reads it), uncropped, so its
geometry is the volume's. `write_labelmap` writes one label value per segment (in segment
order, 1, 2, ...) on the volume's grid, as NIfTI. `write_dicom_seg_file` writes the segments of
a volume opened from a DICOM series as a DICOM SEG referencing that series (the engine's
writer, tevia.volume.dicom_seg).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from TeViASegmentLib import scene

__all__ = ["write_seg_nrrd", "write_labelmap", "write_dicom_seg_file"]


def write_seg_nrrd(segmentation_node, path: Path) -> None:
    """Write `segmentation_node` to `path` (.seg.nrrd) on its reference geometry.

    Raises:
        OSError: Slicer could not write the file.
    """
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetCropToMinimumExtent(False)
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentation_node):
        raise OSError(f"Slicer could not write the segmentation to {path.name}")


def write_labelmap(segmentation_node, volume_node, path: Path) -> None:
    """Write the segments as one labelmap on `volume_node`'s grid (NIfTI; label i = the i-th segment).

    Raises:
        OSError: Slicer could not write the file.
    """
    scene = volume_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        segment_ids = [segmentation_node.GetSegmentation().GetNthSegmentID(i)
                       for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node):
            raise OSError("Slicer could not export the segments to a labelmap")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(labelmap):
            raise OSError(f"Slicer could not write the labelmap to {path.name}")
    finally:
        scene.RemoveNode(labelmap)


def write_dicom_seg_file(segmentation_node, volume_node, series_folder: Path, path: Path, convention: str,
                         model: str) -> None:
    """Write the segments as a DICOM SEG of the series in `series_folder` (one segment per
    TeViA segment, in order; where segments overlap, the later one holds the voxel).

    The labels are taken on the volume's grid, then placed on the series' own grid as the
    engine reads it (nearest neighbour), which is the grid the writer numbers frames on.

    Raises:
        ValueError: a segmentation without segments, or a series the writer refuses (no Frame
            of Reference UID, ...).
    """
    from tevia.volume.dicom_seg import write_dicom_seg
    from tevia.volume.geometry import image_from_array
    from tevia.volume.io import read_image

    ids = scene.segment_ids(segmentation_node)
    if not ids:
        raise ValueError("there is no segment to save yet: segment first")
    labelmap, labels, matrix = np.zeros(scene.volume_shape(volume_node), np.uint8), {}, None
    for number, segment_id in enumerate(ids, start=1):
        _, matrix, mask, prompt = scene.segment_arrays(volume_node, segmentation_node, segment_id)
        labelmap[mask > 0] = number
        labels[number] = prompt
    reference, _ = read_image(series_folder)
    on_series = sitk.Resample(image_from_array(labelmap, matrix), reference, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    write_dicom_seg(on_series, labels, series_folder, path, convention=convention, model=model)
