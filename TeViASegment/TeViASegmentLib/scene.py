"""Scene <-> arrays: export a volume node for the worker, import a labelmap as named segments.

Frames: numpy arrays from `slicer.util.arrayFromVolume` are in K, J, I order (slice, row,
column); the 4x4 IJK-to-RAS matrix maps (I, J, K, 1) voxel indices to RAS millimetres. The
labelmap coming back from the worker has the volume's KJI shape and the volume's geometry.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import slicer.util
import vtk
import vtk.util.numpy_support

__all__ = [
    "TerminologyMatch",
    "volume_arrays",
    "write_worker_input",
    "segment_name",
    "lookup_terminology",
    "import_labelmap",
    "segment_ids",
    "segment_arrays",
    "segment_prompt",
    "PROMPT_TAG",
]

logger = logging.getLogger(__name__)

MAX_SEGMENT_NAME_CHARS = 48
PROMPT_TAG = "TeViA.prompt"


@dataclass(frozen=True)
class TerminologyMatch:
    """A terminology entry found for a prompt.

    Attributes:
        entry: the serialized terminology entry (Slicer's `vtkSegment.SetTerminology` string).
        color: recommended display colour, RGB floats in [0, 1].
        label: the matched 3D Slicer label (for example "liver").
    """

    entry: str
    color: tuple[float, float, float]
    label: str


def volume_arrays(volume_node) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and geometry of a scalar volume node.

    Args:
        volume_node: a vtkMRMLScalarVolumeNode with image data.

    Returns:
        (voxels, ijk_to_ras): voxels is a copy of the image, shape (K, J, I), the volume's dtype;
        ijk_to_ras is a float64 (4, 4) matrix from (I, J, K, 1) to RAS millimetres.

    Raises:
        ValueError: when the node is not a scalar volume or holds no image data.
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        got = None if volume_node is None else volume_node.GetClassName()
        raise ValueError(f"volume_node must be a scalar volume node, got {got}")
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume_node {volume_node.GetName()!r} holds no image data: load a volume first")
    voxels = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    if voxels.ndim != 3:
        raise ValueError(
            f"volume_node {volume_node.GetName()!r} has voxel array shape {voxels.shape}; "
            "only single-component 3D volumes can be segmented")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return voxels, ijk_to_ras


def write_worker_input(volume_node, folder: str | Path) -> dict:
    """Write a volume node as the worker's raw input: `volume.npy` (KJI) + `geometry.json`.

    Returns:
        The request's `input` value: {"npy": path, "geometry": path}.
    """
    folder = Path(folder)
    voxels, ijk_to_ras = volume_arrays(volume_node)
    npy_path, geometry_path = folder / "volume.npy", folder / "geometry.json"
    np.save(npy_path, voxels)
    geometry = {"shape_kji": list(voxels.shape), "ijk_to_ras": ijk_to_ras.tolist()}
    geometry_path.write_text(json.dumps(geometry), encoding="utf-8")
    return {"npy": str(npy_path), "geometry": str(geometry_path)}


def segment_name(prompt: str, max_chars: int = MAX_SEGMENT_NAME_CHARS) -> str:
    """A segment name from a prompt: whitespace collapsed, cut at a word boundary when long.

    Raises:
        ValueError: when the prompt is empty or whitespace only.
    """
    text = " ".join(prompt.split()).rstrip(".")
    if not text:
        raise ValueError(f"prompt must contain text, got {prompt!r}")
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def _unique_name(segmentation, name: str) -> str:
    existing = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    candidate, n = name, 2
    while candidate in existing:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def lookup_terminology(prompt: str, terminology_logic=None) -> TerminologyMatch | None:
    """Find the structure a prompt names in Slicer's loaded terminologies.

    The whole prompt is tried first ("left kidney"), then its longest word runs, so that
    "segment the liver" matches "liver". Matching uses the terminologies' 3dSlicerLabel.

    Args:
        prompt: free text.
        terminology_logic: vtkSlicerTerminologiesModuleLogic; defaults to
            `slicer.modules.terminologies.logic()` when that exists.

    Returns:
        The match, or None when no loaded terminology has the structure (or none is loaded).
    """
    if terminology_logic is None:
        modules = getattr(slicer, "modules", None)
        if modules is None or not hasattr(modules, "terminologies"):
            return None
        terminology_logic = modules.terminologies.logic()
    names = vtk.vtkStringArray()
    terminology_logic.GetLoadedTerminologyNames(names)
    words = re.findall(r"[a-z]+", prompt.lower())
    candidates = [" ".join(words[i:i + n]) for n in range(len(words), 0, -1) for i in range(len(words) - n + 1)]
    for candidate in candidates:
        for index in range(names.GetNumberOfValues()):
            entry = slicer.vtkSlicerTerminologyEntry()
            if terminology_logic.FindTypeInTerminologyBy3dSlicerLabel(names.GetValue(index), candidate, entry):
                type_object = entry.GetTypeModifierObject()
                if type_object is None or not type_object.GetCodeValue():
                    type_object = entry.GetTypeObject()
                color = tuple(float(c) / 255.0 for c in type_object.GetRecommendedDisplayRGBValue())
                return TerminologyMatch(terminology_logic.SerializeTerminologyEntry(entry), color, candidate)
    return None


def _oriented_mask(mask_kji: np.ndarray, volume_node):
    """A vtkOrientedImageData (0/1, uint8) holding a KJI mask with the volume's IJK-to-RAS."""
    image = slicer.vtkOrientedImageData()
    k, j, i = mask_kji.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask_kji.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def segment_prompt(segment) -> str | None:
    """The prompt a segment was made from (its `PROMPT_TAG` tag), or None."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(PROMPT_TAG, value) else None


def segment_arrays(volume_node, segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A segment as arrays on its volume's grid, with its prompt.

    Returns:
        (voxels, ijk_to_ras, mask, prompt): voxels and mask of shape (K, J, I), the volume's
        4x4 IJK-to-RAS matrix, the prompt the segment was made from (or its name).

    Raises:
        ValueError: when the segment is not in the segmentation.
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"segmentId {segment_id!r} is not in segmentation {segmentation_node.GetName()!r}")
    voxels, ijk_to_ras = volume_arrays(volume_node)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)
    return voxels, ijk_to_ras, mask, segment_prompt(segment) or segment.GetName()


def segment_ids(segmentation_node) -> list[str]:
    """The IDs of a segmentation node's segments, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def import_labelmap(labelmap_kji: np.ndarray, labels: dict[int, str], volume_node,
                    segmentation_node=None, terminology_logic=None) -> tuple[object, list[str]]:
    """Add one segment per label to a segmentation node, with the volume as reference geometry.

    Existing segments are never changed; new segments get unique names, their prompt in the
    segment tag `PROMPT_TAG`, and colour + terminology when the prompt names a known
    structure. All or nothing: on any
    failure the segments added so far (and a node created here) are removed again.

    Args:
        labelmap_kji: integer array, shape (K, J, I) equal to the volume's voxel array; value v
            marks the voxels of `labels[v]`, 0 is background.
        labels: label value -> prompt text.
        volume_node: the volume the labelmap was computed from (gives the geometry).
        segmentation_node: where to add the segments; a new node is created when None.
        terminology_logic: see `lookup_terminology`.

    Returns:
        (segmentation_node, ids of the added segments in label order).

    Raises:
        ValueError: when the labelmap's shape differs from the volume's, or labels is empty.
    """
    volume_shape = tuple(slicer.util.arrayFromVolume(volume_node).shape)
    if tuple(labelmap_kji.shape) != volume_shape:
        raise ValueError(f"labelmap_kji has shape {labelmap_kji.shape}, expected the volume's {volume_shape}")
    if not labels:
        raise ValueError("labels must map at least one label value to a prompt, got {}")
    scene = volume_node.GetScene()
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} TeViA"))
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation = segmentation_node.GetSegmentation()
    added: list[str] = []
    try:
        for value in sorted(labels):
            prompt = labels[value]
            segment_id = segmentation.AddEmptySegment("", _unique_name(segmentation, segment_name(prompt)))
            added.append(segment_id)
            match = lookup_terminology(prompt, terminology_logic)
            segment = segmentation.GetSegment(segment_id)
            segment.SetTag(PROMPT_TAG, " ".join(prompt.split()))
            if match is not None:
                segment.SetTerminology(match.entry)
                segment.SetColor(*match.color)
            mask = labelmap_kji == value
            if not mask.any():
                logger.warning("No voxels found for prompt %r: its segment is empty", prompt)
            elif not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                    _oriented_mask(mask, volume_node), segmentation_node, segment_id):
                raise RuntimeError(f"Slicer could not set the voxels of segment {prompt!r}")
    except Exception:
        for segment_id in added:
            segmentation.RemoveSegment(segment_id)
        if created:
            display_nodes = [segmentation_node.GetNthDisplayNode(i)
                             for i in range(segmentation_node.GetNumberOfDisplayNodes())]
            for node in [*display_nodes, segmentation_node]:
                scene.RemoveNode(node)
        raise
    return segmentation_node, added
