"""What the page's Save buttons write: Slicer's own files, on the volume's voxel grid.

`write_seg_nrrd` writes a segmentation the way Slicer's Save dialog does (segment names,
colours, terminology and the prompt tags in the header; slicerio reads it), uncropped, so its
geometry is the volume's. `write_labelmap` writes one label value per segment (in segment
order, 1, 2, ...) on the volume's grid, as NIfTI.
"""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk

__all__ = ["write_seg_nrrd", "write_labelmap"]


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
